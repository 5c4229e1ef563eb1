"""One soak run: build the parts, load and fault them for N minutes, drain, check, tear down.

Parts: mosquitto (persistence true, autosave every second: tests/support.Mosquitto), the LinkProxy between
agent and broker, the agent as a subprocess on the sim profile with its state directory on a small tmpfs,
the wristband gateway twin (TCP) with `wearers` bands, three camera twins, the county collector, and the
command pusher. After the fault phase everything is healed, the bands stop, and the soak waits until the
outbox is empty and every committed alarm/receipt has arrived (or `drain_s` passes); then the agent gets
SIGTERM, the outbox file is read one last time, and the checker gives its verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.soak.checker import Inputs, Verdict, check
from bench.soak.faults import Disk, FaultDriver, SoakAgent, stop_agent
from bench.soak.load import BandLoad, CommandLoad, cameras, wearer_table, write_trust
from bench.soak.observe import County, OutboxWatcher, RssSampler
from bench.soak.proxy import LinkProxy
from tests.support import Mosquitto

log = logging.getLogger("soak")
BOX = "soak-box-001"


@dataclass(frozen=True)
class Options:
    seconds: float  # the fault phase
    seed: int
    short: bool
    workdir: Path
    wearers: int = 300
    drain_s: float = 90.0
    disk_mb: int = 24
    outbox_max_bytes: int = 12 * 1024  # small, so a link drop of a few seconds reaches the eviction policy


def agent_config(o: Options, state: Path, url: str, pub: Path, bands_url: str, cams: list[Any]) -> dict[str, Any]:
    return {
        "box": {"id": BOX, "groups": ["soak"], "profile": "sim", "state_dir": str(state), "heartbeat_s": 2},
        "mqtt": {"url": url, "backoff_min_s": 0.2, "backoff_max_s": 2.0, "connect_timeout_s": 3, "keepalive_s": 5},
        "trust": {"keys": {"soak-county": str(pub)}},
        "outbox": {"max_bytes": o.outbox_max_bytes},
        # batched as in the field, without the field's minute of waiting (as tests/support.py): the drain at the
        # end needs an empty outbox three polls in a row while the box keeps producing, which a window of a
        # second (a heartbeat every 2 s, telemetry every few) seldom leaves
        "uplink": {"batch_window_s": 0.05},
        "broadcast": {"warmup_s": 0.0, "chime": "", "tail_s": 0.0, "off_delay_s": 0.0},
        "wearables": {"report_interval_s": 10.0, "position_min_interval_s": 5.0, "position_min_distance_m": 5.0},
        "gateway": [{"id": "gw1", "url": bands_url, "codec": "watch"}],
        "wearer": wearer_table(o.wearers),
        "cameras": {"interval_s": 2.0, "telemetry_s": 10.0, "connect_timeout_s": 1.0, "step_timeout_s": 1.0,
                    "frame_interval_s": 3600.0, "grab_timeout_s": 5.0},
        "camera": [{"id": c.id, "rtsp": c.url} for c in cams],
    }


async def soak(o: Options) -> Verdict:
    rng = random.Random(o.seed)
    o.workdir.mkdir(parents=True, exist_ok=True)
    (o.workdir / "broker").mkdir(exist_ok=True)
    (o.workdir / "agent").mkdir(exist_ok=True)
    broker = Mosquitto(o.workdir / "broker", persistence=True)
    await asyncio.to_thread(broker.start)
    proxy = await LinkProxy(broker.port).start()
    disk = Disk(o.workdir / "state", o.disk_mb)
    disk.mount()
    key, pub = write_trust(o.workdir / "keys")
    county = await asyncio.to_thread(County(broker.port, BOX).start)
    cams = await cameras()
    agent: SoakAgent | None = None
    try:
        async with BandLoad(o.wearers, rng) as bands:
            agent = SoakAgent(o.workdir / "agent", agent_config(o, disk.path, proxy.url, pub, bands.url, cams),
                              o.workdir / "agent" / "clock-offset")
            watcher = OutboxWatcher(disk.path / "outbox.db")
            rss = RssSampler()
            driver = FaultDriver(rng, broker, agent, proxy, disk, rss, o.short)
            commands = CommandLoad(key, BOX, rng)
            t0 = time.monotonic()
            await driver._start_agent()
            presses_per_s = min(0.8, o.wearers / max(o.seconds, 1.0) * 0.6)
            async with asyncio.TaskGroup() as tg:
                background = [
                    tg.create_task(bands.run(presses_per_s), name="soak.bands"),
                    tg.create_task(watcher.run(), name="soak.outbox"),
                    tg.create_task(rss.run(), name="soak.rss"),
                ]
                pusher = tg.create_task(_push(commands, county, rng), name="soak.commands")
                await driver.run(o.seconds)
                pusher.cancel()
                await driver.heal()
                background[0].cancel()  # the bands go quiet so the outbox can empty
                drained = await _drain(watcher, county, proxy, o.drain_s)
                for task in background[1:]:
                    task.cancel()
            seconds = time.monotonic() - t0
            await asyncio.to_thread(stop_agent, agent)
            relay = agent.relay_statuses()
            left, counters = watcher.final()
            presses, acked = bands.presses, bands.acked_devices()
        await asyncio.to_thread(county.flush)  # every envelope the broker acknowledged has reached the county
        verdict = check(Inputs(
            box=BOX, envelopes=county.envelopes(), arrivals=county.snapshot(), ledger=proxy.ledger,
            outbox_seen=watcher.seen, outbox_left=left, counters=counters, presses=presses,
            acked_devices=acked, commands=commands.sent,
            agent_log=agent.log.read_bytes().decode("utf-8", "surrogateescape"), relay_statuses=relay,
            faults=driver.faults, skipped=driver.skipped, rss_runs=rss.runs, agent_crashes=driver.agent_crashes,
            seconds=seconds,
            max_depth=watcher.max_depth))
        verdict.figures["drained"] = drained
        verdict.figures["wearers"] = o.wearers
        verdict.figures["band_frames"] = bands.frames
        verdict.figures["seed"] = o.seed
        verdict.add("drained at the end", drained, "outbox empty and every committed alarm/receipt arrived"
                    if drained else f"not within {o.drain_s} s")
        return verdict
    finally:
        if agent is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stop_agent, agent)
        for c in cams:
            await c.stop()
        await asyncio.to_thread(county.stop)
        await proxy.stop()
        await asyncio.to_thread(broker.stop)
        disk.unmount()


async def _push(commands: CommandLoad, county: County, rng: random.Random) -> None:
    while True:
        await asyncio.sleep(rng.uniform(3.0, 8.0))
        county.publish_cmd(commands.next().token)


async def _drain(watcher: OutboxWatcher, county: County, proxy: LinkProxy, timeout_s: float) -> bool:
    """Until the outbox is empty and every committed alarm/receipt either arrived or was PUBACKed by the
    broker (those lost in a broker SIGKILL window never arrive), three polls in a row."""
    deadline = time.monotonic() + timeout_s
    calm = 0
    while time.monotonic() < deadline:
        depth = await asyncio.to_thread(watcher.poll)
        got = {env["id"] for _t, env, _r in county.envelopes()}
        urgent = {mid for mid, (cls, _b) in watcher.seen.items() if cls in ("alarm", "receipt")}
        urgent |= {s.id for s in proxy.ledger.sent if s.cls in ("alarm", "receipt")}
        settled = depth == 0 and all(m in proxy.ledger.acked for m in urgent - got)
        calm = calm + 1 if settled else 0
        if calm >= 3:
            return True
        await asyncio.sleep(0.5)
    return False
