"""Gateway transports opened from a config URL, and the reader that keeps one alive.

- `open_gateway(url)`: `/dev/ttyUSB0`, a pty path, `socket://host:port` (anything pyserial's
  `serial_for_url` takes) -> SerialGatewayTransport; `ble:` / `ble:hci1` -> the box's own radio
  (drivers/wristband/ble.py), which speaks Ingics `$GPRP` lines so the "ingics" codec decodes it.
- `GatewayReader`: opens the transport, feeds the codec, writes the codec's replies (watch LK/AL acks), and
  yields events; when the device vanishes it closes, waits a capped, jittered backoff and opens again.
  `on_state(up, reason)` is called once per edge: the link is presumed up at start, so a healthy start calls
  nothing, an unplug calls `(False, reason)` once however many reopen attempts fail, and the replug calls
  `(True, "reopened")` once.

No agent import here (drivers/ never imports agent/). Errors: GatewayError > GatewayGone (transient: the
device is not there now) and GatewayConfigError (permanent: the URL can never work; retried at the
longest backoff so a fixed config is picked up without a restart).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import serial
import serial_asyncio

from drivers.wristband.codec import GatewayCodec
from drivers.wristband.events import WristbandEvent

log = logging.getLogger("drivers.wristband")

DEFAULT_BAUD = 115200
READ_BYTES = 4096


class GatewayError(Exception):
    """Base of the transport errors."""


class GatewayGone(GatewayError):
    """The device is not there (unplugged, socket closed, adapter down). Transient: retry later."""


class GatewayConfigError(GatewayError):
    """The URL can never be opened as written (bad scheme or syntax)."""


class GatewayTransport(Protocol):
    url: str

    async def open(self) -> None:
        """Open the device; raises GatewayGone when it is not there, GatewayConfigError for a bad URL."""
        ...

    async def read(self) -> bytes:
        """The next bytes (never empty); raises GatewayGone when the device went away."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes to the gateway; raises GatewayGone when the device went away."""
        ...

    async def close(self) -> None:
        """Release the device. Idempotent; never raises."""
        ...


class SerialGatewayTransport:
    """pyserial-asyncio over `serial_for_url`: a tty, a pty, `socket://host:port`, `rfc2217://...`, `loop://`."""

    def __init__(self, url: str, *, baudrate: int = DEFAULT_BAUD, read_bytes: int = READ_BYTES) -> None:
        if not url.strip():
            raise GatewayConfigError("empty gateway url")
        self.url = url
        self.baudrate = baudrate
        self._read_bytes = read_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        await self.close()
        try:
            # opening can block (a socket:// connect, a USB adapter probing): keep it off the event loop
            port = await asyncio.to_thread(serial.serial_for_url, self.url, baudrate=self.baudrate, timeout=0)
        except ValueError as e:
            raise GatewayConfigError(f"{self.url}: {e}") from e
        except (serial.SerialException, OSError) as e:
            raise GatewayGone(f"cannot open {self.url}: {e}") from e
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._read_bytes * 4)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await serial_asyncio.connection_for_serial(loop, lambda: protocol, port)
        except (serial.SerialException, OSError) as e:
            port.close()
            raise GatewayGone(f"cannot attach {self.url}: {e}") from e
        self._reader = reader
        self._writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    async def read(self) -> bytes:
        if self._reader is None:
            raise GatewayGone(f"{self.url} is not open")
        try:
            data = await self._reader.read(self._read_bytes)
        except (serial.SerialException, OSError) as e:
            raise GatewayGone(f"{self.url}: {e}") from e
        if not data:
            raise GatewayGone(f"{self.url}: end of stream")
        return data

    async def write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise GatewayGone(f"{self.url} is not open")
        try:
            writer.write(data)
            await writer.drain()
        except (serial.SerialException, OSError) as e:
            raise GatewayGone(f"{self.url}: {e}") from e

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()  # SerialTransport closes the port; nothing to await on a serial transport


def open_gateway(url: str, *, baudrate: int = DEFAULT_BAUD, ble_adapter: str | None = None) -> GatewayTransport:
    """The transport for a `[[gateway]] url` (not opened yet). `ble:` uses `ble_adapter` unless it names one."""
    if url == "ble" or url.startswith("ble:"):
        from drivers.wristband.ble import BleakAdvertSource, BleGatewayTransport  # bleak only where BLE is used

        adapter = url[4:] or ble_adapter or "hci0"
        return BleGatewayTransport(BleakAdvertSource(adapter), adapter=adapter, url=url)
    return SerialGatewayTransport(url, baudrate=baudrate)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reopen delays: initial_s x factor^attempt, capped at max_s, each spread by ±jitter (a fraction)."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 32))
        return max(0.0, base * (1 + rng.uniform(-self.jitter, self.jitter)))


StateCallback = Callable[[bool, str], None]


@dataclass(slots=True)
class ReaderStats:
    opens: int = 0  # successful opens
    outages: int = 0  # up -> down edges
    open_failures: int = 0


class GatewayReader:
    """Keeps one gateway open and turns its bytes into events (see the module doc for on_state).

    Use as `async with contextlib.aclosing(reader.events()) as events: async for ev in events: ...`;
    closing the generator (or cancelling its consumer) closes the transport.
    """

    def __init__(
        self,
        transport: GatewayTransport,
        codec: GatewayCodec,
        *,
        on_state: StateCallback | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        name: str = "gateway",
    ) -> None:
        self.transport = transport
        self.codec = codec
        self.stats = ReaderStats()
        self.name = name
        self._on_state = on_state
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._up = True  # presumed up until an open or read fails
        self.reason = ""

    @property
    def up(self) -> bool:
        return self._up

    async def events(self) -> AsyncIterator[WristbandEvent]:
        attempt = 0
        try:
            while True:
                try:
                    await self.transport.open()
                except GatewayConfigError as e:
                    self.stats.open_failures += 1
                    self._set_state(False, f"bad url: {e}")
                    await self._sleep(self._backoff.max_s)
                    continue
                except (GatewayGone, OSError) as e:
                    self.stats.open_failures += 1
                    self._set_state(False, str(e) or type(e).__name__)
                    await self._sleep(self._backoff.delay(attempt, self._rng))
                    attempt += 1
                    continue
                self.stats.opens += 1
                self.codec.reset()  # a frame cut by the outage must not join the next one
                self._set_state(True, "reopened")
                try:
                    while True:
                        data = await self.transport.read()
                        attempt = 0  # only data proves the device is really back
                        for event in self.codec.feed(data):
                            answer = self.codec.reply(event)
                            if answer is not None:
                                await self.transport.write(answer)
                            yield event
                except (GatewayGone, OSError) as e:
                    reason = str(e) or type(e).__name__
                await self.transport.close()
                self._set_state(False, reason)
                await self._sleep(self._backoff.delay(attempt, self._rng))
                attempt += 1
        finally:
            await self.transport.close()

    def _set_state(self, up: bool, reason: str) -> None:
        if up == self._up:
            return
        self._up = up
        self.reason = reason
        if up:
            log.info("gateway %s (%s) is back", self.name, self.transport.url)
        else:
            self.stats.outages += 1
            log.warning("gateway %s (%s) is down: %s", self.name, self.transport.url, reason)
        if self._on_state is not None:
            self._on_state(up, reason)
