"""service.py: the running feature over a real pty gateway, with commands; the uplink is a recording double.

The end-to-end tests through the real outbox, link and mosquitto are in tests/test_wearables_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.config import Config, parse_config
from agent.context import AgentContext, Hardware
from agent.profile import HardwareProfile
from agent.protocol.commands import Command
from agent.protocol.envelope import Envelope, MsgClass
from agent.receipts import Receipts
from agent.wearables.service import GatewayService, WearablesCore, make_services
from drivers.wristband.codec import make_decoder
from drivers.wristband.events import BandAlarm
from drivers.wristband.transport import open_gateway
from drivers.wristband.watch import encode_alarm, encode_lk, encode_position, status_bits
from tests.wearables_support import HALF, Handlers, RecordingUplink, collection, latlon, square, until


def make_config(tmp_path: Path, gateway_url: str = "/dev/null", **wearables: Any) -> Config:
    return parse_config({
        "box": {"id": "box-test", "profile": "sim", "state_dir": str(tmp_path / "state")},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "gateway": [{"id": "gw1", "url": gateway_url, "codec": "watch", "silent_s": 600}],
        "wearer": [{"id": f"W{i}", "device": f"880000000{i}"} for i in range(1, 4)],
        "wearables": {"tick_s": 0.02, "exit_s": 20, **wearables},
    })


def context(cfg: Config, clock: ManualClock,
            uplink: RecordingUplink | None = None) -> tuple[AgentContext, RecordingUplink, Handlers]:
    uplink, handlers = uplink or RecordingUplink(), Handlers()
    ctx = AgentContext(config=cfg, profile=HardwareProfile(name="sim", kind="sim"), uplink=uplink,
                       receipts=Receipts(uplink, clock), clock=clock, commands=handlers,
                       hardware=Hardware(gateway_opener=open_gateway, decoder_factory=make_decoder))
    return ctx, uplink, handlers


class GatedUplink(RecordingUplink):
    """A recorder whose durable `send` completes only when the test opens the gate (a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting: list[str] = []

    async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
        self.waiting.append(kind)
        await self.gate.wait()
        return await super().send(cls, kind, data, ts_ms)


def opened(gw: GatewayService) -> Callable[[], bool]:
    return lambda: gw.reader is not None and gw.reader.stats.opens >= 1


def frames_seen(gw: Any, n: int) -> Callable[[], bool]:
    return lambda: gw.reader is not None and gw.reader.codec.stats.frames >= n


@contextlib.asynccontextmanager
async def running(ctx: AgentContext) -> AsyncIterator[list[Any]]:
    services = make_services(ctx)
    ready = asyncio.Event()
    count = 0

    def one_ready() -> None:
        nonlocal count
        count += 1
        if count == len(services):
            ready.set()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run(one_ready), name=f"{s.name}.run") for s in services]
        try:
            await asyncio.wait_for(ready.wait(), 10)
            for s in services:  # frames written before the port is open would be flushed by the open
                if isinstance(s, GatewayService):
                    await until(opened(s))
            yield services
        finally:
            for t in tasks:
                t.cancel()


@pytest.fixture
def pty() -> Any:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.set_blocking(master, False)
    yield master, path
    os.close(master)
    os.close(slave)


def read_all(fd: int) -> bytes:
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            out += chunk
    return out


def cmd(kind: str, data: dict[str, Any], cid: str = "c1") -> Command:
    return Command(cid, kind, 0, 2**31, ("box:box-test",), data, "county-2026")


async def test_make_services_registers_commands_and_one_service_per_gateway(tmp_path: Path) -> None:
    ctx, _, handlers = context(make_config(tmp_path), ManualClock())
    services = make_services(ctx)
    assert [s.name for s in services] == ["wearables", "wearables.gateway.gw1"]
    assert isinstance(services[0], WearablesCore) and isinstance(services[1], GatewayService)
    assert set(handlers.handlers) == {"geofence.set", "wearers.set"}


async def test_sos_over_a_real_pty_is_an_alarm_and_the_band_is_answered(tmp_path: Path, pty: Any) -> None:
    master, path = pty
    clock = ManualClock()
    ctx, uplink, _ = context(make_config(tmp_path, path), clock)
    lat, lon = latlon(0, 0)
    async with running(ctx):
        os.write(master, b"\x00garbage" + encode_alarm("8800000001", ts=clock.time(), lat=lat, lon=lon,
                                                       status=status_bits(BandAlarm.SOS)))
        await until(lambda: "sos" in uplink.kinds())
        (sos,) = [e for e in uplink.sent if e.kind == "sos"]
        assert sos.cls.wire == "alarm" and sos.data["wearer"] == "W1" and sos.data["pos_stale"] is False
        assert sos.data["raw"].startswith("[3G*8800000001*")
        assert await until(lambda: read_all(master)) == b"[3G*8800000001*0002*AL]"  # the band stops resending
        # an unregistered band: counted, not alerted
        os.write(master, encode_alarm("9999999999", ts=clock.time(), lat=lat, lon=lon,
                                      status=status_bits(BandAlarm.SOS)))
        os.write(master, encode_lk("8800000002", battery_pct=90))
        await until(lambda: "lk" in str(read_all(master)).lower())
        assert uplink.kinds().count("sos") == 1


async def test_geofence_set_applies_persists_and_drives_exits(tmp_path: Path, pty: Any) -> None:
    master, path = pty
    clock = ManualClock()
    cfg = make_config(tmp_path, path)
    ctx, uplink, handlers = context(cfg, clock)
    async with running(ctx) as services:
        gw = services[1]
        await handlers.handlers["geofence.set"](cmd("geofence.set", {
            "fences": collection(square()), "crs": "WGS84", "assign": {"W1": ["home"]}}))
        assert uplink.sent[-1].kind == "cmd" and uplink.sent[-1].data["state"] == "applied"
        for i, x in enumerate((0, HALF + 100, HALF + 100, HALF + 100, HALF + 100)):
            clock.advance(10)
            os.write(master, encode_position("8800000001", ts=clock.time(), lat=latlon(x, 0)[0],
                                             lon=latlon(x, 0)[1]))
            await until(frames_seen(gw, i + 1))  # one fix at a time, each at its time
        await until(lambda: "geofence_exit" in uplink.kinds())
        assert uplink.kinds().count("geofence_exit") == 1
        assert uplink.kinds().count("geofence_state") == 1

    # a restart: the county's fences and the wearer's state come back from wearables.db
    ctx2, uplink2, _ = context(cfg, clock)
    async with running(ctx2) as services:
        core = services[0]
        assert set(core.engine.fences) == {"home"}
        assert core.engine.geofences.state("W1", "home").value == "outside"
        clock.advance(10)
        os.write(master, encode_position("8800000001", ts=clock.time(), lat=latlon(0, 0)[0], lon=latlon(0, 0)[1]))
        await until(lambda: "geofence_enter" in uplink2.kinds())
        assert "geofence_state" not in uplink2.kinds()


@pytest.mark.parametrize(("data", "detail"), [
    ({"fences": {"type": "nope"}, "crs": "WGS84", "assign": {}}, "FeatureCollection"),
    ({"fences": collection(square()), "crs": "EPSG:3857", "assign": {}}, "crs"),
    ({"fences": collection(square()), "crs": "GCJ02", "assign": {"W1": ["school"]}}, "unknown fence"),
])
async def test_invalid_geofence_set_is_rejected_and_changes_nothing(tmp_path: Path, data: dict[str, Any],
                                                                    detail: str) -> None:
    clock = ManualClock()
    cfg = make_config(tmp_path)
    ctx, uplink, handlers = context(cfg, clock)
    core = make_services(ctx)[0]
    assert isinstance(core, WearablesCore)
    task = asyncio.create_task(core.run(lambda: None), name="wearables.run")
    try:
        await handlers.handlers["geofence.set"](cmd("geofence.set", data))
        receipt = uplink.sent[-1]
        assert receipt.data["state"] == "rejected" and receipt.data["reason"] == "invalid_fences"
        assert detail in receipt.data["detail"]
        assert core.engine.fences == {}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_valid_commands_the_store_cannot_keep_are_failed_and_change_nothing(tmp_path: Path) -> None:
    """Valid data, but wearables.db refuses the write (a real SQLite refusal): `failed` store_error, not applied."""
    clock = ManualClock()
    cfg = make_config(tmp_path)
    ctx, uplink, handlers = context(cfg, clock)
    core = make_services(ctx)[0]
    assert isinstance(core, WearablesCore)
    task = asyncio.create_task(core.run(lambda: None), name="wearables.run")
    try:
        await core.loaded.wait()
        await core.store.db.execute("PRAGMA query_only = ON")  # every write now fails inside SQLite
        await handlers.handlers["geofence.set"](cmd("geofence.set", {"fences": collection(square()), "crs": "WGS84",
                                                                     "assign": {"W1": ["home"]}}))
        receipt = uplink.sent[-1].data
        assert (receipt["state"], receipt["reason"]) == ("failed", "store_error") and receipt["detail"]
        assert core.engine.fences == {}
        await handlers.handlers["wearers.set"](cmd("wearers.set", {"wearers": [
            {"id": "T7", "device": "ac:23:3f:a0:00:07"}]}, "c2"))
        receipt = uplink.sent[-1].data
        assert (receipt["cmd"], receipt["state"], receipt["reason"]) == ("c2", "failed", "store_error")
        assert core.engine.registry.lookup("AC233FA00007") is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_wearers_set_registers_new_bands_and_survives_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    cfg = make_config(tmp_path)
    ctx, uplink, handlers = context(cfg, clock)
    core = make_services(ctx)[0]
    assert isinstance(core, WearablesCore)
    task = asyncio.create_task(core.run(lambda: None), name="wearables.run")
    try:
        await handlers.handlers["wearers.set"](cmd("wearers.set", {"wearers": [
            {"id": "T7", "device": "ac:23:3f:a0:00:07", "report_interval_s": 30}]}))
        assert uplink.sent[-1].data == {"cmd": "c1", "state": "applied", "wearers": 1}
        assert core.engine.registry.lookup("AC233FA00007") is not None
        await handlers.handlers["wearers.set"](cmd("wearers.set", {"wearers": [{"id": "T 8"}]}, "c2"))
        assert uplink.sent[-1].data["state"] == "rejected" and uplink.sent[-1].data["reason"] == "invalid_wearers"
        assert "T 8" in uplink.sent[-1].data["detail"] or "id" in uplink.sent[-1].data["detail"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ctx2, _, _ = context(cfg, clock)
    core2 = make_services(ctx2)[0]
    assert isinstance(core2, WearablesCore)
    task = asyncio.create_task(core2.run(lambda: None), name="wearables.run")
    try:
        await core2.loaded.wait()
        w = core2.engine.registry.lookup("AC:23:3F:A0:00:07")
        assert w is not None and w.id == "T7" and w.report_interval_s == 30
        assert core2.engine.registry.lookup("8800000001") is not None  # config wearers stay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_unplugged_gateway_is_one_down_event_and_replug_one_up(tmp_path: Path) -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    clock = ManualClock()
    ctx, uplink, _ = context(make_config(tmp_path, path), clock)
    try:
        async with running(ctx) as services:
            gw = services[1]
            os.write(master, encode_lk("8800000001", battery_pct=80))
            await until(lambda: gw.reader is not None and gw.reader.stats.opens == 1)
            # unplug: the pty disappears (both ends closed), reopen attempts fail until it comes back
            os.close(master)
            os.close(slave)
            await until(lambda: [e.data["state"] for e in uplink.sent if e.kind == "gateway"] == ["down"])
            clock.advance(3600)  # an hour unplugged: the monitor must not call the bands lost
            await services[0].wait_ticks(3)  # the monitor has looked (it is the thing under test)
            assert "lost_contact" not in uplink.kinds()
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def test_the_band_is_acked_only_after_its_sos_is_stored(tmp_path: Path, pty: Any) -> None:
    master, path = pty
    clock = ManualClock()
    uplink = GatedUplink()
    ctx, _, _ = context(make_config(tmp_path, path), clock, uplink)
    lat, lon = latlon(0, 0)
    async with running(ctx):
        os.write(master, encode_alarm("8800000001", ts=clock.time(), lat=lat, lon=lon,
                                      status=status_bits(BandAlarm.SOS)))
        await until(lambda: uplink.waiting == ["sos"])  # the alarm is on its way to the disk, not there yet
        assert read_all(master) == b""  # so the band has no ack: were we to die now, it would send again
        assert "sos" not in uplink.kinds()
        uplink.gate.set()
        assert await until(lambda: read_all(master)) == b"[3G*8800000001*0002*AL]"
        assert uplink.kinds()[0] == "sos"


async def test_an_sos_the_outbox_cannot_store_is_not_acked(tmp_path: Path, pty: Any) -> None:
    from agent.outbox import OutboxError

    class BrokenDisk(RecordingUplink):
        broken = True

        async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
            if self.broken:
                raise OutboxError("disk I/O error")
            return await super().send(cls, kind, data, ts_ms)

    master, path = pty
    clock = ManualClock()
    ctx, uplink, _ = context(make_config(tmp_path, path), clock, BrokenDisk())
    lat, lon = latlon(0, 0)
    async with running(ctx) as services:
        os.write(master, encode_alarm("8800000001", ts=clock.time(), lat=lat, lon=lon,
                                      status=status_bits(BandAlarm.SOS)))
        os.write(master, encode_lk("8800000002", battery_pct=90))
        assert await until(lambda: read_all(master)) == b"[3G*8800000002*0002*LK]"  # the LK after it is answered
        assert services[0].counters["failed"] == 1  # the SOS is counted and logged, and not acked
        # the disk recovers; the band, unanswered, resends: a new alarm, not a repeat folded into a lost one
        uplink.broken = False  # type: ignore[attr-defined]
        os.write(master, encode_alarm("8800000001", ts=clock.time(), lat=lat, lon=lon,
                                      status=status_bits(BandAlarm.SOS)))
        assert await until(lambda: read_all(master)) == b"[3G*8800000001*0002*AL]"
        assert uplink.kinds().count("sos") == 1
