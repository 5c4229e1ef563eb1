"""Shared builders for the wearables tests: a village fence, fixes at given metres from it, an Uplink recorder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.context import CommandHandler
from agent.protocol.envelope import Envelope, MsgClass
from agent.wearables.geo import LocalFrame
from drivers.wristband.events import BandAlarm, BandReport, Fix, FixSource

# a village square, 400 m x 400 m, centred here (Xishuangbanna)
LAT0, LON0 = 22.0, 100.8
FRAME = LocalFrame.around(LAT0, LON0)
HALF = 200.0


def latlon(x: float, y: float) -> tuple[float, float]:
    return FRAME.lat_lon(x, y)


def square(half: float = HALF, *, fid: str = "home", props: dict[str, Any] | None = None,
           to: Any = None) -> dict[str, Any]:
    """A GeoJSON Feature: a square of side 2*half metres around (LAT0, LON0); `to` maps (lat, lon) -> (lat, lon)."""
    corners = [(-half, -half), (half, -half), (half, half), (-half, half), (-half, -half)]
    ring = []
    for x, y in corners:
        lat, lon = latlon(x, y)
        if to is not None:
            lat, lon = to(lat, lon)
        ring.append([lon, lat])
    return {"type": "Feature", "id": fid, "properties": props or {},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def gps(x: float, y: float, acc_m: float | None = 5.0, fix_ts: float | None = None) -> Fix:
    lat, lon = latlon(x, y)
    return Fix(lat, lon, fix_ts, FixSource.GPS, acc_m)


def report(device: str, fix: Fix | None = None, *alarms: BandAlarm, battery: int | None = 80,
           press: int | None = None, raw: bytes = b"[3G*0000*0002*LK]") -> BandReport:
    return BandReport(device, fix, frozenset(alarms), battery, press, None, "UD", raw)


@dataclass
class RecordingUplink:
    """A test double of agent.service.Uplink: records what would have been sent, durably, in order."""

    box: str = "box-test"
    sent: list[Envelope] = field(default_factory=list)

    async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
        env = Envelope(self.box, len(self.sent) + 1, ts_ms or 0, cls, kind, data)
        self.sent.append(env)
        return env

    def send_nowait(self, cls: MsgClass, kind: str, data: dict[str, Any],
                    ts_ms: int | None = None) -> asyncio.Future[Envelope]:
        fut: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        env = Envelope(self.box, len(self.sent) + 1, ts_ms or 0, cls, kind, data)
        self.sent.append(env)
        fut.set_result(env)
        return fut

    def kinds(self) -> list[str]:
        return [e.kind for e in self.sent]


@dataclass
class Handlers:
    """A test double of agent.context.CommandRegistry."""

    handlers: dict[str, CommandHandler] = field(default_factory=dict)

    def register(self, kind: str, handler: CommandHandler) -> None:
        self.handlers[kind] = handler


async def until(pred: Callable[[], Any], limit_s: float = 10.0) -> Any:
    """Wait for another task or process to get somewhere (observation, not timing)."""
    deadline = time.monotonic() + limit_s
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
    return value
