"""Outbox and link figures against one local mosquitto, with raw paho as the baseline of the same run.

    python -m bench.outbox [--n 50000] [--rss-rows 1000000]

(a) raw paho: N QoS 1 publishes with a full in-flight window (the baseline)
(b) our outbox: enqueue rate of a telemetry burst (send_nowait, group commit)
(c) our drain: a backlog of N rows from the outbox through the link until every PUBACK, and (c)/(a)
(d) alarm send() -> PUBACK latency p50/p99 while telemetry flows
(e) agent RSS with a 1M-row backlog (a fresh child process: the outbox and the link draining it), against
    the same child with an empty outbox; RSS after the drain; the outbox file's size before and after it
(f) alarm send() -> PUBACK, and commit -> PUBACK (the link's part), p50/p99, idle and under a 2,000 msg/s
    telemetry flow, with the link's bound on telemetry in flight and without it (the baseline: as before
    issue 11), in one run, the four cases interleaved round by round
Goals (issue 2): (c)/(a) >= 0.5, (b) >= 20k msg/s, (d) p99 <= 25 ms, (e) <= 60 MB; (issue 11) (f) p99 <= 5 ms
under load. Figures, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import parse_config
from agent.link import BULK_INFLIGHT, Link
from agent.outbox import Outbox
from agent.protocol.envelope import MsgClass
from agent.service import InboundCommand
from tests.support import Mosquitto, agent_config_dict

PAYLOAD = {"wearer": "W123", "device": "8800000015",
           "pos": {"lat": 30.523456, "lon": 114.312345, "fix_ts": 1763900000, "acc_m": 8.0}}


class _NoCommands:
    async def on_command(self, msg: InboundCommand) -> None:
        return None


def raw_paho(url_port: int, n: int, window: int) -> float:
    body = json.dumps({"v": 1, "id": "bench:1", "box": "bench", "seq": 1, "ts": 0, "class": "telemetry",
                       "kind": "position", "data": PAYLOAD}).encode()
    done = threading.Event()
    acked = 0

    def on_publish(client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
    c.max_inflight_messages_set(window)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    t0 = time.perf_counter()
    for _ in range(n):
        c.publish("vc/v1/box/bench/up/telemetry/position", body, qos=1)
    done.wait(300)
    elapsed = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / elapsed


class _AckTimes(Outbox):
    acked_at: dict[int, float]

    def ack(self, seq: int) -> None:
        self.acked_at[seq] = time.perf_counter()
        super().ack(seq)


async def ours(broker: Mosquitto, workdir: Path, n: int) -> dict[str, float]:
    config = parse_config(agent_config_dict(workdir, broker.url, box="bench"))
    outbox = _AckTimes(workdir / "bench.db", "bench", max_bytes=10**9, telemetry_ttl_s=10**6,
                       commit_interval_s=config.outbox.commit_interval_ms / 1000)
    outbox.acked_at = {}
    link = Link(config, outbox, _NoCommands())
    out: dict[str, float] = {}
    async with asyncio.TaskGroup() as tg:
        ob_task = tg.create_task(outbox.run(lambda: None), name="outbox.run")
        await outbox.wait_open()
        # (b) enqueue burst, link not running yet: the backlog for (c)
        t0 = time.perf_counter()
        futures = [outbox.send_nowait(MsgClass.TELEMETRY, "position", PAYLOAD) for _ in range(n)]
        await asyncio.gather(*futures)
        out["enqueue_per_s"] = n / (time.perf_counter() - t0)
        out["enqueue_commits"] = outbox.commits
        # (c) drain
        t0 = time.perf_counter()
        link_task = tg.create_task(link.run(lambda: None), name="link.run")
        while link.published < n:
            await asyncio.sleep(0.01)
        out["drain_per_s"] = n / (time.perf_counter() - t0)
        # (d) alarm latency under a telemetry flow of ~2000 msg/s
        stop = asyncio.Event()

        async def telemetry_flow() -> None:
            while not stop.is_set():
                for _ in range(20):
                    outbox.send_nowait(MsgClass.TELEMETRY, "position", PAYLOAD)
                await asyncio.sleep(0.01)

        flow = tg.create_task(telemetry_flow(), name="bench.flow")
        lat = []
        for _ in range(300):
            t = time.perf_counter()
            env = await outbox.send(MsgClass.ALARM, "sos", PAYLOAD)
            while env.seq not in outbox.acked_at:
                await asyncio.sleep(0.0005)
            lat.append((outbox.acked_at[env.seq] - t) * 1000)
            await asyncio.sleep(0.01)
        stop.set()
        await flow
        lat.sort()
        out["alarm_p50_ms"] = statistics.median(lat)
        out["alarm_p99_ms"] = lat[int(len(lat) * 0.99) - 1]
        link_task.cancel()
        ob_task.cancel()
    return out


class _AckEvents(Outbox):
    """A real outbox that stamps each PUBACK and wakes whoever waits for that seq (no polling in the timing)."""

    acked_at: dict[int, float]
    waiting: dict[int, asyncio.Event]

    def ack(self, seq: int) -> None:
        self.acked_at[seq] = time.perf_counter()
        if (ev := self.waiting.pop(seq, None)) is not None:
            ev.set()
        super().ack(seq)


async def alarm_latency(broker: Mosquitto, workdir: Path, samples: int, rounds: int = 4) -> dict[str, list[float]]:
    """(f): per case (bounded|unbounded, idle|load) the send->PUBACK and commit->PUBACK times in ms."""
    config = parse_config(agent_config_dict(workdir, broker.url, box="alarm"))
    outbox = _AckEvents(workdir / "alarm.db", "alarm", max_bytes=10**9, telemetry_ttl_s=10**6,
                        commit_interval_s=config.outbox.commit_interval_ms / 1000)
    outbox.acked_at, outbox.waiting = {}, {}
    out: dict[str, list[float]] = {}
    per_round = max(1, samples // rounds)
    async with asyncio.TaskGroup() as tg:
        ob_task = tg.create_task(outbox.run(lambda: None), name="outbox.run")
        await outbox.wait_open()
        for _ in range(rounds):
            for bounded in (False, True):
                link = Link(config, outbox, _NoCommands())
                if not bounded:
                    link.bulk_window = config.mqtt.inflight  # the whole window, as before issue 11
                link_task = tg.create_task(link.run(lambda: None), name="link.run")
                while link.state.value != "connected":
                    await asyncio.sleep(0.01)
                for load in (False, True):
                    stop = asyncio.Event()

                    async def telemetry_flow(stop: asyncio.Event = stop) -> None:
                        while not stop.is_set():
                            for _ in range(20):
                                outbox.send_nowait(MsgClass.TELEMETRY, "position", PAYLOAD)
                            await asyncio.sleep(0.01)

                    flow = tg.create_task(telemetry_flow(), name="bench.flow") if load else None
                    await asyncio.sleep(0.2)  # the flow under way
                    name = f"{'bounded' if bounded else 'unbounded'}.{'load' if load else 'idle'}"
                    total, after_commit = out.setdefault(name, []), out.setdefault(name + ".link", [])
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        fut = outbox.send_nowait(MsgClass.ALARM, "sos", PAYLOAD)
                        env = await fut
                        t1 = time.perf_counter()
                        if env.seq not in outbox.acked_at:
                            ev = outbox.waiting.setdefault(env.seq, asyncio.Event())
                            await asyncio.wait_for(ev.wait(), 10)
                        total.append((outbox.acked_at[env.seq] - t0) * 1000)
                        after_commit.append((outbox.acked_at[env.seq] - t1) * 1000)
                        await asyncio.sleep(0.01)
                    stop.set()
                    if flow is not None:
                        await flow
                while sum(outbox.depth().values()):  # drained before the next case starts
                    await asyncio.sleep(0.01)
                link_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link_task
        ob_task.cancel()
    return out


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[max(0, int(len(xs) * q + 0.5) - 1)]


async def rss_fill(path: Path, rows: int) -> None:
    """Run in its own child: queue `rows` telemetry rows, so the measuring child starts as an agent would
    after an outage (the filler's 50 000 pending futures at a time are not the agent's memory)."""
    filler = Outbox(path, "rss", max_bytes=10**10, telemetry_ttl_s=10**7)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(filler.run(lambda: None))
        await filler.wait_open()
        for start in range(0, rows, 50_000):
            await asyncio.gather(*[filler.send_nowait(MsgClass.TELEMETRY, "position", PAYLOAD)
                                   for _ in range(min(50_000, rows - start))])
        task.cancel()


def _file_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()) / 2**20


async def rss_child(broker_url: str, workdir: Path, name: str, max_s: float) -> None:
    """Run in a fresh child: open the outbox `name` and the link, drain it (up to `max_s`), then idle 5 s
    for the space to be given back; report RSS at open, its peak while draining, after the drain, and
    the file's size before and after. With an empty outbox this is the baseline of the same run."""
    config = parse_config(agent_config_dict(workdir, broker_url, box="rss"))
    path = workdir / name
    proc = psutil.Process()
    outbox = Outbox(path, "rss", max_bytes=10**10, telemetry_ttl_s=10**7)
    link = Link(config, outbox, _NoCommands())
    file0 = _file_mb(path)
    peak = 0
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(outbox.run(lambda: None)), tg.create_task(link.run(lambda: None))]
        await outbox.wait_open()
        depth0 = sum(outbox.depth().values())
        rss_open = proc.memory_info().rss
        t0 = time.perf_counter()
        while sum(outbox.depth().values()) and time.perf_counter() - t0 < max_s:
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.2)
        drain_s = time.perf_counter() - t0
        peak = max(peak, proc.memory_info().rss)
        if depth0:
            outbox.reclaimed.clear()
            with contextlib.suppress(TimeoutError):  # the reclaim pass that follows the last deletes
                await asyncio.wait_for(outbox.reclaimed.wait(), 30)
        await asyncio.sleep(5)
        rss_after = proc.memory_info().rss
        for t in tasks:
            t.cancel()
    print(json.dumps({"backlog_rows": depth0, "published": link.published, "drain_s": drain_s,
                      "left": sum(outbox.depth().values()), "rss_open_mb": rss_open / 2**20,
                      "rss_peak_mb": peak / 2**20, "rss_after_mb": rss_after / 2**20,
                      "file_before_mb": file0, "file_after_mb": _file_mb(path)}))


def _child(*args: str) -> dict[str, float]:
    child = subprocess.run([sys.executable, "-m", "bench.outbox", *args], capture_output=True, text=True)
    with contextlib.suppress(ValueError, IndexError):
        return dict(json.loads(child.stdout.strip().splitlines()[-1]))
    print(child.stderr[-2000:], file=sys.stderr)
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--rss-rows", type=int, default=1_000_000)
    ap.add_argument("--rss-drain-s", type=float, default=600.0, help="longest the (e) drain may take")
    ap.add_argument("--rss-child", nargs=3, metavar=("BROKER", "DIR", "DB"), help=argparse.SUPPRESS)
    ap.add_argument("--rss-fill", metavar="DB", help=argparse.SUPPRESS)
    ap.add_argument("--alarm-samples", type=int, default=800, help="alarms per case in (f); 0 skips it")
    args = ap.parse_args()
    if args.rss_child:
        asyncio.run(rss_child(args.rss_child[0], Path(args.rss_child[1]), args.rss_child[2], args.rss_drain_s))
        return
    if args.rss_fill:
        asyncio.run(rss_fill(Path(args.rss_fill), args.rss_rows))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker", persistence=False).start()
        try:
            window = parse_config(agent_config_dict(work, broker.url)).mqtt.inflight
            raw = raw_paho(broker.port, args.n, window)
            res = asyncio.run(ours(broker, work, args.n))
            lat = asyncio.run(alarm_latency(broker, work, args.alarm_samples)) if args.alarm_samples else {}
            rss: dict[str, float] = {}
            idle: dict[str, float] = {}
            if args.rss_rows:
                idle = _child("--rss-child", broker.url, str(work), "idle.db")  # the baseline: nothing queued
                _child("--rss-rows", str(args.rss_rows), "--rss-fill", str(work / "rss.db"))
                rss = _child("--rss-drain-s", str(args.rss_drain_s), "--rss-child", broker.url, str(work), "rss.db")
        finally:
            broker.stop()
    print(f"(a) raw paho, {args.n} QoS 1, window {window}: {raw:10.0f} msg/s   (baseline)")
    print(f"(b) outbox enqueue, telemetry burst:     {res['enqueue_per_s']:10.0f} msg/s   "
          f"({res['enqueue_commits']:.0f} commits)   goal >= 20000")
    print(f"(c) outbox -> link drain of {args.n}:      {res['drain_per_s']:10.0f} msg/s   "
          f"(c)/(a) = {res['drain_per_s'] / raw:.2f}   goal >= 0.5")
    print(f"(d) alarm send -> PUBACK under telemetry:  p50 {res['alarm_p50_ms']:.1f} ms  "
          f"p99 {res['alarm_p99_ms']:.1f} ms   goal p99 <= 25 ms")
    if lat:
        print(f"(f) alarm latency, ms p50/p99 ({len(lat['bounded.idle'])} alarms per case; 2,000 msg/s telemetry "
              f"under load; link = commit -> PUBACK):")
        for bound, label in (("unbounded", f"telemetry in flight <= window {window} (baseline)"),
                             ("bounded", f"telemetry in flight <= {min(window, BULK_INFLIGHT)}")):
            cells = [f"{case} {_p(lat[f'{bound}.{case}'], 0.5):4.1f}/{_p(lat[f'{bound}.{case}'], 0.99):5.1f}"
                     f" (link {_p(lat[f'{bound}.{case}.link'], 0.5):4.1f}/{_p(lat[f'{bound}.{case}.link'], 0.99):5.1f})"
                     for case in ("idle", "load")]
            print(f"    {label:46s} {'   '.join(cells)}")
        print("    goal: p99 <= 5 ms under load")
    if rss and idle:
        print(f"(e) RSS, outbox + link, empty outbox (baseline): {idle['rss_open_mb']:.1f} MB")
        print(f"    with a {rss['backlog_rows']:.0f}-row backlog: {rss['rss_open_mb']:.1f} MB at open, "
              f"{rss['rss_peak_mb']:.1f} MB peak while draining ({rss['rss_peak_mb'] / idle['rss_open_mb']:.2f}x "
              f"baseline)   goal <= 60 MB")
        print(f"    drained {rss['published']:.0f} in {rss['drain_s']:.0f} s ({rss['left']:.0f} left); "
              f"{rss['rss_after_mb']:.1f} MB after the drain")
        print(f"    outbox file {rss['file_before_mb']:.0f} MB before the drain, {rss['file_after_mb']:.2f} MB after")


if __name__ == "__main__":
    main()
