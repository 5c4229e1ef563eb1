"""The reader that keeps one gateway open, and the transport Protocol it reads through.

- `GatewayReader`: opens the transport, feeds the codec and yields events; when the device vanishes it
  closes, waits a capped, jittered backoff and opens again. `on_state(up, reason)` is called once per
  edge: the link is presumed up at start, so a healthy start calls nothing, an unplug calls
  `(False, reason)` once however many reopen attempts fail, and the replug calls `(True, "reopened")` once.
- Acknowledge after the consumer is done: the codec's reply to an event (a watch's `AL` / `LK` ack) is
  written only when the consumer comes back for the next event, i.e. after its loop body for this event
  has finished. A consumer that awaits durable storage of an alarm in that body therefore acks only what
  is stored; when it could not store it, it calls `withhold_reply()` and the band, unanswered, keeps
  resending. A write that fails never
  drops an event: the rest of the chunk is still yielded (unacknowledged), then the outage is handled.
- Setup at every connect: with a `setup` script (drivers/wristband/setup.py: the profile's
  `[gateway_firmware]`), each successful open starts a task that writes the commands in order and checks
  the replies, while the read loop goes on (every chunk read is also shown to the setup session). Its
  result goes to `on_setup(result)`; a link that drops first cancels it, and the next open starts over.

No pyserial/bleak import here (tests/test_codec_purity.py checks it) so the agent can import this module
without the concrete transports, and no agent import (drivers/ never imports agent/). Errors:
GatewayError > GatewayGone (transient: the device is not there now) and GatewayConfigError (permanent:
the URL can never work; retried at the longest backoff so a fixed config is picked up without a restart).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.wristband.codec import GatewayCodec
from drivers.wristband.events import WristbandEvent
from drivers.wristband.setup import SetupResult, SetupScript, SetupSession

log = logging.getLogger("drivers.wristband")


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
SetupCallback = Callable[[SetupResult], None]


@dataclass(slots=True)
class ReaderStats:
    opens: int = 0  # successful opens
    outages: int = 0  # up -> down edges
    open_failures: int = 0
    reply_failures: int = 0  # acks not delivered because the write failed (the events were still yielded)
    setups: int = 0  # setup scripts run to the end (whatever the replies said)
    setup_failures: int = 0  # ... of which at least one command was refused or unanswered


class GatewayReader:
    """Keeps one gateway open and turns its bytes into events (see the module doc for on_state).

    Use as `async with contextlib.aclosing(reader.events()) as events: async for ev in events: ...`;
    an event's reply is written when the loop asks for the next one. Closing the generator (or
    cancelling its consumer) closes the transport and sends no reply for the event being handled.
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
        setup: SetupScript | None = None,
        on_setup: SetupCallback | None = None,
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
        self._withhold = False
        self.reason = ""
        self._setup = setup if setup is not None and setup.commands else None
        self._on_setup = on_setup
        self._session: SetupSession | None = None
        self._setup_task: asyncio.Task[None] | None = None
        self.last_setup: SetupResult | None = None

    @property
    def up(self) -> bool:
        return self._up

    def withhold_reply(self) -> None:
        """Send no reply for the event being handled now (the consumer could not keep it)."""
        self._withhold = True

    async def events(self) -> AsyncGenerator[WristbandEvent, None]:
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
                self._start_setup()
                reason: str | None = None
                while reason is None:
                    try:
                        data = await self.transport.read()
                    except (GatewayGone, OSError) as e:
                        reason = str(e) or type(e).__name__
                        break
                    attempt = 0  # only data proves the device is really back
                    if self._session is not None:
                        self._session.feed(data)
                    for event in self.codec.feed(data):
                        self._withhold = False
                        yield event
                        # back here only once the consumer has finished with `event` (see the module doc)
                        if reason is None and not self._withhold:
                            reason = await self._acknowledge(event)
                await self._stop_setup()
                await self.transport.close()
                self._set_state(False, reason or "gone")
                await self._sleep(self._backoff.delay(attempt, self._rng))
                attempt += 1
        finally:
            try:
                await self._stop_setup()
            finally:
                await self.transport.close()

    # --- setup at connect ---------------------------------------------------------------------------

    def _start_setup(self) -> None:
        if self._setup is None:
            return
        self._session = SetupSession(self._setup, self.transport.write)
        self._setup_task = asyncio.create_task(self._run_setup(self._session), name=f"{self.name}.setup")

    async def _run_setup(self, session: SetupSession) -> None:
        try:
            result = await session.run()
        except (GatewayGone, OSError) as e:  # the read loop sees the outage too and reopens; setup reruns
            log.info("gateway %s: setup interrupted: %s", self.name, e)
            return
        finally:
            if self._session is session:
                self._session = None
        self.stats.setups += 1
        if not result.ok:
            self.stats.setup_failures += 1
        self.last_setup = result
        if self._on_setup is not None:
            try:
                self._on_setup(result)
            except Exception:  # a reporting bug must not end this task unseen, nor the reader
                log.exception("gateway %s: the setup result could not be reported", self.name)

    async def _stop_setup(self) -> None:
        task, self._setup_task, self._session = self._setup_task, None, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # ours, or the consumer's own cancellation arriving now: re-raise only the latter
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def _acknowledge(self, event: WristbandEvent) -> str | None:
        """Write the codec's reply to `event`, if any; the outage reason when the write failed, else None."""
        answer = self.codec.reply(event)
        if answer is None:
            return None
        try:
            await self.transport.write(answer)
        except (GatewayGone, OSError) as e:
            self.stats.reply_failures += 1
            return str(e) or type(e).__name__
        return None

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
