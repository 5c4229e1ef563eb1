"""Gateway transports opened from a config URL.

- `open_gateway(url)`: `/dev/ttyUSB0`, a pty path, `socket://host:port` (anything pyserial's
  `serial_for_url` takes) -> SerialGatewayTransport; `ble:` / `ble:hci1` -> the box's own radio
  (drivers/wristband/ble.py), which speaks Ingics `$GPRP` lines so the "ingics" codec decodes it.

The transport Protocol, its errors and the `GatewayReader` that keeps one open live in
drivers/wristband/reader.py, which imports no pyserial/bleak (the agent imports only that module); the
errors are re-exported here for the drivers and twins that raise them.
"""

from __future__ import annotations

import asyncio

import serial
import serial_asyncio

from drivers.wristband.reader import GatewayConfigError, GatewayGone, GatewayTransport

__all__ = ["DEFAULT_BAUD", "GatewayConfigError", "GatewayGone", "GatewayTransport", "SerialGatewayTransport",
           "open_gateway"]

DEFAULT_BAUD = 115200
READ_BYTES = 4096


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
