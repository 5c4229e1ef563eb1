"""The box's own Bluetooth radio as a gateway (`ble:` / `ble:hci1`), through bleak.

The transport turns every advertisement into an Ingics `$GPRP` line (`advert_line`), so the "ingics" codec,
its tag table and its press logic serve both a BLE gateway on a wire and the local radio, and the codec stays
sans-I/O. bleak hands us parsed fields, not the raw bytes; `encode_adv` rebuilds equivalent AD structures.

The scanner sits behind `AdvertSource` so a twin (sim/wristband.py `SimAdvertSource`) can stand in where
there is no radio; bleak is imported only inside BleakAdvertSource.start().
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from drivers.wristband.bleadv import Advertisement, AdvFormatError, encode_adv, normalize_mac
from drivers.wristband.ingics import encode_gprp
from drivers.wristband.transport import GatewayGone

log = logging.getLogger("drivers.wristband")

QUEUE_LINES = 2048  # adverts waiting for the reader; beyond this the oldest are dropped (and counted)
LINES_PER_READ = 64

AdvertCallback = Callable[[str, int, Advertisement], None]  # (MAC, rssi dBm, advertisement)
LostCallback = Callable[[str], None]  # the radio went away: reason


class AdvertSource(Protocol):
    async def start(self, on_advert: AdvertCallback, on_lost: LostCallback) -> None:
        """Start an active scan reporting duplicates; raises GatewayGone when the adapter is not usable."""
        ...

    async def stop(self) -> None:
        """Stop scanning. Idempotent; never raises."""
        ...


def advert_line(mac: str, gateway: str, rssi: int, adv: Advertisement) -> bytes:
    """The `$GPRP` line an Ingics gateway would have sent for this advertisement. Raises AdvFormatError/ValueError."""
    return encode_gprp(normalize_mac(mac), gateway, max(-127, min(20, rssi)), encode_adv(adv))


class BleGatewayTransport:
    """GatewayTransport over an AdvertSource: read() returns `$GPRP` lines; write() has nothing to send to."""

    def __init__(self, source: AdvertSource, *, adapter: str = "hci0", url: str = "ble:") -> None:
        self.url = url
        self.adapter = adapter
        self.dropped = 0  # adverts dropped because the reader fell behind
        self.unencodable = 0  # adverts whose fields could not be rebuilt (bad MAC, oversize)
        self._source = source
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LINES)
        self._lost: str | None = None
        self._wake = asyncio.Event()
        self._open = False

    async def open(self) -> None:
        await self.close()
        self._queue = asyncio.Queue(QUEUE_LINES)
        self._lost = None
        self._wake = asyncio.Event()
        await self._source.start(self._on_advert, self._on_lost)
        self._open = True

    async def read(self) -> bytes:
        if not self._open:
            raise GatewayGone(f"{self.url} is not open")
        while self._queue.empty():
            if self._lost is not None:
                raise GatewayGone(f"{self.url}: {self._lost}")
            self._wake.clear()
            await self._wake.wait()
        lines = [self._queue.get_nowait()]
        while not self._queue.empty() and len(lines) < LINES_PER_READ:
            lines.append(self._queue.get_nowait())
        return b"".join(lines)

    async def write(self, data: bytes) -> None:
        if not self._open:
            raise GatewayGone(f"{self.url} is not open")
        # BLE tags expect no answer; the codec never asks for one

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self._source.stop()

    def _on_advert(self, mac: str, rssi: int, adv: Advertisement) -> None:
        try:
            line = advert_line(mac, self.adapter, rssi, adv)
        except (AdvFormatError, ValueError):
            self.unencodable += 1
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(line)
        self._wake.set()

    def _on_lost(self, reason: str) -> None:
        self._lost = reason
        self._wake.set()


class BleakAdvertSource:
    """bleak's BleakScanner: active scan on one adapter, duplicates reported (BlueZ DuplicateData filter)."""

    def __init__(self, adapter: str = "hci0") -> None:
        self.adapter = adapter
        self._scanner: object | None = None

    async def start(self, on_advert: AdvertCallback, on_lost: LostCallback) -> None:
        from bleak import BleakScanner
        from bleak.exc import BleakError

        def detected(device: object, ad: object) -> None:
            adv = Advertisement(
                local_name=ad.local_name,  # type: ignore[attr-defined]
                manufacturer_data=dict(ad.manufacturer_data),  # type: ignore[attr-defined]
                service_data=dict(ad.service_data),  # type: ignore[attr-defined]
                service_uuids=tuple(ad.service_uuids),  # type: ignore[attr-defined]
                tx_power=ad.tx_power,  # type: ignore[attr-defined]
            )
            on_advert(device.address, ad.rssi, adv)  # type: ignore[attr-defined]

        scanner = BleakScanner(
            detected, scanning_mode="active", bluez={"adapter": self.adapter, "filters": {"DuplicateData": True}}
        )
        try:
            await scanner.start()
        except (BleakError, OSError) as e:
            raise GatewayGone(f"BLE adapter {self.adapter}: {e}") from e
        self._scanner = scanner

    async def stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        from bleak.exc import BleakError

        try:
            await scanner.stop()  # type: ignore[attr-defined]
        except (BleakError, OSError) as e:
            log.warning("BLE adapter %s: stopping the scan failed: %s", self.adapter, e)
