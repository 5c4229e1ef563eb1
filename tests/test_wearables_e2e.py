"""End to end: the gateway twin on a real pty -> the wearables services -> the real outbox and link -> mosquitto.

The agent's parts are composed here the way agent.app composes them (outbox, link, the wearables
services), so the whole path is real: pty bytes, codec, engine, SQLite outbox, paho, broker, a county
subscriber. The engine's clock is a ManualClock so minutes of band silence take no wall time; the
outbox and the link run on the system clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock, SystemClock
from agent.config import Config, parse_config
from agent.context import AgentContext, Hardware
from agent.link import Link
from agent.outbox import Outbox
from agent.profile import HardwareProfile
from agent.protocol.envelope import MsgClass
from agent.receipts import Receipts
from agent.service import InboundCommand
from agent.wearables.service import GatewayService, make_services
from drivers.wristband.codec import make_decoder
from drivers.wristband.transport import open_gateway
from sim.wristband import GatewayTwin, SimWearer
from tests.support import Collector, Mosquitto
from tests.wearables_support import HALF, LAT0, LON0, Handlers, collection, latlon, square, until

pytestmark = pytest.mark.timeout(90)


class NoCommands:
    async def on_command(self, msg: InboundCommand) -> None:
        return None


def config(tmp_path: Path, broker: Mosquitto, url: str, fences: Path) -> Config:
    return parse_config({
        "box": {"id": "box-e2e", "profile": "sim", "state_dir": str(tmp_path / "state")},
        "mqtt": {"url": broker.url, "backoff_min_s": 0.2, "backoff_max_s": 1.0},
        "uplink": {"batch_window_s": 0.05},  # batched as in the field, without its minute
        "gateway": [{"id": "gw1", "url": url, "codec": "watch"}],
        "wearer": [{"id": f"W{i}", "device": f"880000000{i}", "fences": ["home"]} for i in range(1, 5)],
        "wearables": {"tick_s": 0.02, "fences_file": str(fences), "exit_s": 20},
    })


@contextlib.asynccontextmanager
async def agent(cfg: Config, clock: ManualClock) -> AsyncIterator[GatewayService]:
    outbox = Outbox(cfg.outbox_path, cfg.box.id, max_bytes=cfg.outbox.max_bytes,
                    telemetry_ttl_s=cfg.outbox.telemetry_ttl_s, commit_interval_s=0.01, clock=SystemClock())
    link = Link(cfg, outbox, NoCommands(), clock=SystemClock())
    ctx = AgentContext(config=cfg, profile=HardwareProfile(name="sim", kind="sim"), uplink=outbox,
                       receipts=Receipts(outbox, clock), clock=clock, commands=Handlers(),
                       hardware=Hardware(gateway_opener=open_gateway, decoder_factory=make_decoder))
    services = [outbox, link, *make_services(ctx)]
    gw = services[-1]
    assert isinstance(gw, GatewayService)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run(lambda: None), name=f"{s.name}.run") for s in services]
        try:
            await until(lambda: gw.reader is not None and gw.reader.stats.opens >= 1)
            yield gw
        finally:
            for t in tasks:
                t.cancel()


def alarms(collector: Collector, kind: str) -> list[dict[str, Any]]:
    return [e for e in collector.envelopes() if e["kind"] == kind]


async def step(twin: GatewayTwin, gw: GatewayService, clock: ManualClock, seconds: float = 10.0) -> None:
    """Everyone walks `seconds`, every band that is not silent reports, and the agent has read it all."""
    clock.advance(seconds)
    twin.advance(seconds)
    assert gw.reader is not None
    before = gw.reader.codec.stats.frames
    n = await twin.report_all(split=True)
    await until(lambda: gw.reader is not None and gw.reader.codec.stats.frames >= before + n)


async def test_sos_exit_lost_contact_and_unplug_over_a_real_pty(tmp_path: Path, broker: Mosquitto,
                                                               collector: Collector) -> None:
    fences = tmp_path / "fences.geojson"
    fences.write_text(json.dumps(collection(square())))
    far = latlon(HALF + 3000, 0)
    wearers = [
        SimWearer("8800000001", [(LAT0, LON0)], jitter_m=5),
        SimWearer("8800000002", [(LAT0, LON0), far], speed_m_s=4.0, jitter_m=8),  # walks out
        SimWearer("8800000003", [latlon(-50, 50)], jitter_m=5),  # goes silent
        SimWearer("8800000004", [latlon(HALF - 10, 0)], jitter_m=6),  # lives at the fence line
    ]
    clock = ManualClock()
    async with GatewayTwin("watch", wearers, link="pty", seed=7, clock=clock) as twin:
        cfg = config(tmp_path, broker, twin.url, fences)
        async with agent(cfg, clock) as gw:
            await step(twin, gw, clock)
            await asyncio.to_thread(collector.wait_for, lambda _: len(alarms(collector, "geofence_state")) == 4)

            # SOS pressed -> an sos alarm on the broker, and the band got its AL answer
            twin.press_sos("8800000001")
            await step(twin, gw, clock)
            await asyncio.to_thread(collector.wait_for, lambda _: alarms(collector, "sos"))
            (sos,) = alarms(collector, "sos")
            assert sos["class"] == "alarm" and sos["data"]["wearer"] == "W1" and sos["data"]["pos_stale"] is False
            assert any(b"*AL]" in f for f in twin.reply_frames())

            # W2 walks out through jitter; W3 goes silent; W4 jitters at the fence line the whole time
            twin.silence("8800000003")
            for _ in range(30):  # 300 s
                await step(twin, gw, clock)
            await asyncio.to_thread(collector.wait_for,
                                    lambda _: alarms(collector, "geofence_exit") and alarms(collector, "lost_contact"))

            # unplug the gateway for a while (an hour on the engine's clock), then plug it back in
            await twin.unplug()
            await asyncio.to_thread(collector.wait_for, lambda _: [e["data"]["state"] for e in
                                                                   alarms(collector, "gateway")] == ["down"])
            for _ in range(60):
                clock.advance(60)
                await gw.core.wait_ticks(1)  # the monitor looks at every minute of the outage (under test)
            await twin.replug()
            await asyncio.to_thread(collector.wait_for, lambda _: [e["data"]["state"] for e in
                                                                   alarms(collector, "gateway")] == ["down", "up"],
                                    30)
            for _ in range(10):
                await step(twin, gw, clock)
            # nothing more is expected: let the monitor look at least twice, then push a marker through the
            # same outbox and link; once the county has it, any stray alarm raised before it is there too
            await gw.core.wait_ticks(2)
            gw.ctx.uplink.send_nowait(MsgClass.EVENT, "test_marker", {})
            await asyncio.to_thread(collector.wait_for, lambda _: alarms(collector, "test_marker"))

    assert [e["data"]["wearer"] for e in alarms(collector, "sos")] == ["W1"]
    assert [e["data"]["wearer"] for e in alarms(collector, "geofence_exit")] == ["W2"]
    assert [e["data"]["wearer"] for e in alarms(collector, "lost_contact")] == ["W3"]
    every_alarm = [e["kind"] for e in collector.envelopes() if e["class"] == "alarm"]
    assert sorted(every_alarm) == ["geofence_exit", "lost_contact", "sos"]
    assert [e["data"]["state"] for e in alarms(collector, "gateway")] == ["down", "up"]


class AckWatch(list[bytes]):
    """The twin's record of what the agent wrote back; each ack is checked against the outbox file as it lands."""

    def __init__(self, outbox_path: Path) -> None:
        super().__init__()
        self.outbox_path = outbox_path
        self.sos_rows_at_ack: list[int] = []

    def append(self, chunk: bytes) -> None:
        if b"*AL]" in chunk:
            with contextlib.closing(sqlite3.connect(f"file:{self.outbox_path}?mode=ro", uri=True)) as db:
                (n,) = db.execute("SELECT count(*) FROM outbox WHERE kind = 'sos'").fetchone()
            self.sos_rows_at_ack.append(n)
        super().append(chunk)


async def test_the_sos_ack_reaches_the_band_only_after_the_alarm_is_in_the_outbox_file(tmp_path: Path) -> None:
    """No link here, so the alarm row stays in the outbox file for the test to find."""
    clock = ManualClock()
    band = SimWearer("8800000001", [(LAT0, LON0)])
    async with GatewayTwin("watch", [band], link="pty", seed=3, clock=clock) as twin:
        cfg = parse_config({
            "box": {"id": "box-e2e", "profile": "sim", "state_dir": str(tmp_path / "state")},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "gateway": [{"id": "gw1", "url": twin.url, "codec": "watch"}],
            "wearer": [{"id": "W1", "device": band.device}],
        })
        watch = twin.replies = AckWatch(cfg.outbox_path)
        outbox = Outbox(cfg.outbox_path, cfg.box.id, max_bytes=cfg.outbox.max_bytes,
                        telemetry_ttl_s=cfg.outbox.telemetry_ttl_s, commit_interval_s=0.01, clock=SystemClock())
        ctx = AgentContext(config=cfg, profile=HardwareProfile(name="sim", kind="sim"), uplink=outbox,
                           receipts=Receipts(outbox, clock), clock=clock, commands=Handlers(),
                           hardware=Hardware(gateway_opener=open_gateway, decoder_factory=make_decoder))
        services = [outbox, *make_services(ctx)]
        gw = services[-1]
        assert isinstance(gw, GatewayService)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(s.run(lambda: None), name=f"{s.name}.run") for s in services]
            try:
                await until(lambda: gw.reader is not None and gw.reader.stats.opens >= 1)
                for n in range(3):  # three presses, three frames: every ack must find its alarm stored
                    clock.advance(600)  # past sos_fold_s: each press is a new alarm, not a repeat
                    twin.press_sos(band.device)
                    await twin.send(twin.frame_for(band))
                    await until(lambda n=n: len(watch.sos_rows_at_ack) > n)
            finally:
                for t in tasks:
                    t.cancel()
    assert watch.sos_rows_at_ack == [1, 2, 3]
