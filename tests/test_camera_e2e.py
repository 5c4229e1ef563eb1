"""End to end: camera twins -> the camera service -> the real SQLite outbox and link -> mosquitto -> the
county (a subscriber, and `village county status` reading the same broker).

Composed the way agent.app composes it. The camera service's clock is a ManualClock driven one cycle at a
time; the outbox, link and heartbeat run on the system clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.cameras.service import CameraService, make_services
from agent.clock import ManualClock, SystemClock
from agent.config import Config, parse_config
from agent.context import AgentContext, Hardware
from agent.heartbeat import Heartbeat
from agent.link import Link
from agent.outbox import Outbox
from agent.profile import HardwareProfile
from agent.receipts import Receipts
from agent.service import InboundCommand
from county.status import add_arguments, run_status
from sim.cameras import Mode, SimCamera, sim_probes
from tests.support import Collector, Mosquitto

pytestmark = pytest.mark.timeout(90)


class NoCommands:
    async def on_command(self, msg: InboundCommand) -> None:
        return None

    def register(self, kind: str, handler: Any) -> None:
        return None


def config(tmp_path: Path, broker: Mosquitto, cams: list[SimCamera]) -> Config:
    cameras = []
    for c in cams:
        secret = c.write_credentials(tmp_path / f"{c.id}.secret")
        cameras.append({"id": c.id, "rtsp": c.url, "credentials": str(secret), "onvif_port": c.onvif_port})
    return parse_config({
        "box": {"id": "lhk-menglou-001", "profile": "sim", "state_dir": str(tmp_path / "state")},
        "mqtt": {"url": broker.url, "backoff_min_s": 0.2, "backoff_max_s": 1.0},
        "uplink": {"batch_window_s": 0.05},  # batched as in the field, without its minute
        "cameras": {"spread": 0.0, "step_timeout_s": 1.0, "connect_timeout_s": 1.0},
        "camera": cameras,
    })


async def until(pred: Any, limit_s: float = 20.0) -> Any:
    """Wait for another task or process to get somewhere (observation, not timing)."""
    deadline = time.monotonic() + limit_s
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)
    return value


@contextlib.asynccontextmanager
async def agent(cfg: Config, clock: ManualClock, cams: list[SimCamera], videos: Path) -> AsyncIterator[CameraService]:
    outbox = Outbox(cfg.outbox_path, cfg.box.id, max_bytes=cfg.outbox.max_bytes,
                    telemetry_ttl_s=cfg.outbox.telemetry_ttl_s, commit_interval_s=0.01, clock=SystemClock())
    link = Link(cfg, outbox, NoCommands(), clock=SystemClock())
    heartbeat = Heartbeat(outbox, SystemClock(), interval_s=0.5)
    ctx = AgentContext(config=cfg, profile=HardwareProfile(name="sim", kind="sim"), uplink=outbox,
                       receipts=Receipts(outbox, clock), clock=clock, commands=NoCommands(),
                       hardware=Hardware(camera_probes=sim_probes(cams, videos, step_timeout_s=1.0)))
    (svc,) = make_services(ctx)
    assert isinstance(svc, CameraService)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run(lambda: None), name=f"{s.name}.run") for s in (outbox, link, heartbeat)]
        try:
            await outbox.wait_open()
            await svc.start()
            yield svc
        finally:
            svc._save()
            await svc.flush()  # the state file is written in a thread; the next start reads it
            for t in tasks:
                t.cancel()


async def cycles(svc: CameraService, clock: ManualClock, n: int) -> None:
    for _ in range(n):
        clock.advance(60)
        await svc.run_cycle()


async def county_status(broker: Mosquitto, tmp_path: Path) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--broker", broker.url, "--db", str(tmp_path / "county.db"), "--listen", "0.5", "--json"])
    out = io.StringIO()
    assert await run_status(args, out) == 0
    return [json.loads(x) for x in out.getvalue().splitlines()]


def camera_events(collector: Collector) -> list[dict[str, Any]]:
    return [e for e in collector.envelopes() if e["kind"] == "camera"]


async def test_camera_reports_reach_the_county(broker, collector, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cams = [await SimCamera(id=f"4206820000132000000{i}").start() for i in range(3)]
    cams[2].mode = Mode.NOT_FOUND
    clock = ManualClock(wall=time.time())
    cfg = config(tmp_path, broker, cams)
    try:
        assert await county_status(broker, tmp_path) == []  # opens the county's persistent session
        async with agent(cfg, clock, cams, tmp_path / "videos") as svc:
            await cycles(svc, clock, 2)
            clock.advance(30)
            await svc.report()
            await until(lambda: any(e["kind"] == "cameras" for e in collector.envelopes()))
            await until(lambda: any(e["kind"] == "heartbeat" for e in collector.envelopes()))
        events = camera_events(collector)
        by_cam: dict[str, list[str]] = {}
        for e in events:
            by_cam.setdefault(e["data"]["camera"], []).append(e["data"]["state"])
        assert by_cam == {cams[0].id: ["unknown", "online"], cams[1].id: ["unknown", "online"],
                          cams[2].id: ["unknown", "degraded"]}
        assert all(e["class"] == "event" and e["ts"] == e["data"]["since"] for e in events)
        (tele,) = [e for e in collector.envelopes() if e["kind"] == "cameras"]
        assert tele["data"]["summary"] == {"online": 2, "degraded": 1, "offline": 0, "unknown": 0,
                                           "maintenance": 0, "total": 3}
        assert {c["camera"]: c["seconds"]["unknown"] for c in tele["data"]["cameras"]} == dict.fromkeys(
            (c.id for c in cams), 120.0)
        wire = json.dumps([m.payload.decode() for m in collector.snapshot()])
        for c in cams:
            assert c.password not in wire and c.password not in caplog.text

        # the county's view of the same broker: what the box sent while the console was not running
        rows = await county_status(broker, tmp_path)
        box = next(r for r in rows if r.get("box") == "lhk-menglou-001")
        assert (box["cameras_online"], box["cameras_total"]) == (2, 3)
        assert box["backlog"] is not None and box["last_seen"] is not None
        village = next(r for r in rows if r.get("village") == "lhk-menglou")
        # 3 cameras x 120 s unknown at start, then 30 s: two online, one degraded
        assert village["boxes"] == 1 and village["online_rate"] == 0.6667 and village["observed"] == 0.2
    finally:
        for c in cams:
            await c.stop()


async def test_restart_says_unknown_since_the_agent_stopped(broker, collector, tmp_path):
    cams = [await SimCamera(id="c1").start()]
    clock = ManualClock(wall=time.time())
    cfg = config(tmp_path, broker, cams)
    try:
        async with agent(cfg, clock, cams, tmp_path / "videos") as svc:
            await cycles(svc, clock, 2)
            await until(lambda: len(camera_events(collector)) >= 2)
        stopped_ms = round(clock.time() * 1000)
        clock.advance(3600)
        async with agent(cfg, clock, cams, tmp_path / "videos") as svc:
            await until(lambda: len(camera_events(collector)) >= 3)
            await cycles(svc, clock, 2)
            await until(lambda: len(camera_events(collector)) >= 4)
        states = [(e["data"]["state"], e["data"]["reason"]) for e in camera_events(collector)]
        assert states == [("unknown", "agent_start"), ("online", None), ("unknown", "agent_down"), ("online", None)]
        assert camera_events(collector)[2]["data"]["since"] == stopped_ms
        seqs = [e["seq"] for e in collector.envelopes()]
        assert len(set(seqs)) == len(seqs)
    finally:
        for c in cams:
            await c.stop()
