"""County ingest benchmark: envelopes/s through mosquitto into SQLite and PostgreSQL against a plain
executemany baseline, PUBACK -> alarm on the event stream, and the server's RSS and list render times.

    python -m bench.county_ingest [--quick] [--big] [--no-pg] [--profile] [--workers N]

In one run, for SQLite (a WAL file under a temp dir) and PostgreSQL (a private cluster, tests/pgcluster.py):

1. *Baseline*: the same `messages` rows the ingest will store, inserted with `executemany` (SQLAlchemy
   Core `insert(messages)`, batches of 500 = the ingest's `batch_max`, one transaction each) into a fresh
   database on the same engine. Rows only: the ingest also writes what it derives (boxes, positions,
   alarms, receipts, camera rows), so the ratio prices all of that.
2. *Ingest*: `county.ingest.Ingest` with its defaults (shared subscription, manual ack after commit,
   batches of 500 / 50 ms, the LiveFeed on) into a second fresh database, while a publisher process
   (`--publish-child`, its own interpreter, so not sharing the GIL) sends the same envelopes QoS 1 as
   `--boxes` box ids over `--conns` MQTT connections, as fast as the broker takes them. envelopes/s =
   envelopes / (GO to the last row committed). A fresh mosquitto per database.
3. *Alarm latency*: every alarm's PUBACK time at the publisher against the time the same alarm was read
   from the `EventHub` subscription (time.monotonic: CLOCK_MONOTONIC, the same clock in both processes),
   during the burst of (2) and in a steady phase at `--steady-rate` envelopes/s afterwards.
4. *Server*: `--probe-child` in a fresh interpreter: the database of (2) (`--big`: a database filled with
   1,000,000 messages, 2,000 boxes, 10,000 alarms), Ingest connected to the broker, the real app
   (create_app) with a regions file of all the boxes; VmRSS/VmHWM after rendering, and the time of
   GET /api/v1/boxes and GET /api/v1/alarms through the ASGI app (median and max of 7, after one warm-up).

Mix (per envelope, seeded): 60 % position telemetry, 24 % heartbeat, 3 % cameras telemetry, 6 % camera
events, 6 % command receipts, 1 % sos alarms; built with agent.protocol (Envelope, Topics).
Goals (issue 12): >= 10,000 envelopes/s on SQLite, ratio >= 0.5, alarm p99 <= 200 ms, each list <= 200 ms.
`--profile` runs the SQLite ingest under cProfile (the event loop's thread) and prints the top entries.
`--workers N`: the ingest as N processes (IngestConfig.workers). Besides envelopes/s, the drain prints the
CPU the ingest process(es) used per 1,000 envelopes (user + system, this process and its workers; not the
broker's nor PostgreSQL's): on a shared machine it moves much less with the load than the wall-clock
rates do. The "MQTT floor" uses the paho client class ingest uses (county.ingest._Client, when it has one).
The bench runs against an older county.ingest too (no `totals`/`workers`): for before/after figures, run
it from a checkout of the older code.
Figures measured on 2026-12-01, and which goals they meet: docs/county-server.md, "Performance".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.topics import Topics

T0_MS = 1_764_547_200_000  # 2025-12-01 00:00 UTC: the envelopes' clock starts here
BATCH = 500
REPO = Path(__file__).resolve().parent.parent
TOPICS = Topics()
MIX = (("position", 0.60), ("heartbeat", 0.24), ("cameras", 0.03), ("camera", 0.06), ("receipt", 0.06),
       ("sos", 0.01))


# ------------------------------------------------------------------------------------------ envelopes
def box_id(i: int) -> str:
    return f"bx-{i:05d}"


def make_envelopes(boxes: int, n: int, seed: int, seq_base: int = 0) -> list[Envelope]:
    """`n` envelopes from `boxes` boxes, each box's seq rising from seq_base + 1 (deterministic per seed)."""
    rnd = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    seqs = [seq_base] * boxes
    out: list[Envelope] = []
    for i, kind in enumerate(rnd.choices(kinds, weights, k=n)):
        b = rnd.randrange(boxes)
        seqs[b] += 1
        box, seq, ts = box_id(b), seqs[b], T0_MS + (seq_base + i) * 10
        w = f"w{b}-{rnd.randrange(8)}"
        pos = {"lat": 21.9 + rnd.random() / 10, "lon": 101.2 + rnd.random() / 10, "acc_m": 8.0, "fix_ts": ts}
        if kind == "position":
            env = Envelope(box, seq, ts, MsgClass.TELEMETRY, "position",
                           {"wearer": w, "device": f"88{b:05d}{w[-1]}", "pos": pos, "battery": 71, "steps": 1234})
        elif kind == "heartbeat":
            env = Envelope(box, seq, ts, MsgClass.TELEMETRY, "heartbeat", {
                "version": "1.4.0", "uptime_s": seq * 60, "load": 0.12, "mem_mb": 44.7, "disk_free_mb": 2210,
                "outbox": {"depth": {"alarm": 0, "receipt": 0, "event": 0, "telemetry": rnd.randrange(3)},
                           "counters": {"sent": seq, "evicted.telemetry": 0}},
                "link": {"connected": True, "rtt_ms": 38}})
        elif kind == "cameras":
            cams = [{"camera": f"cam{c}", "state": "online", "reason": None, "since": T0_MS,
                     "seconds": {"online": 870.0, "degraded": 0.0, "offline": 30.0, "unknown": 0.0,
                                 "maintenance": 0.0}, "latency_ms": 12.5} for c in range(3)]
            env = Envelope(box, seq, ts, MsgClass.TELEMETRY, "cameras",
                           {"from": ts - 900_000, "to": ts, "summary": {"online": 3, "total": 3}, "cameras": cams})
        elif kind == "camera":
            env = Envelope(box, seq, ts, MsgClass.EVENT, "camera",
                           {"camera": f"cam{rnd.randrange(3)}", "state": rnd.choice(["online", "offline"]),
                            "reason": None, "since": ts, "previous": "online"})
        elif kind == "receipt":
            env = Envelope(box, seq, ts, MsgClass.RECEIPT, "cmd",
                           {"cmd": f"bc-{rnd.randrange(50)}", "state": rnd.choice(["received", "started",
                                                                                  "finished"]),
                            "reason": None})
        else:
            env = Envelope(box, seq, ts, MsgClass.ALARM, "sos",
                           {"wearer": w, "device": "band-1", "pos": pos, "pos_stale": False, "raw": "frame"})
        out.append(env)
    return out


def message_rows(envs: list[Envelope], received: int) -> list[dict[str, Any]]:
    return [{"id": e.id, "box": e.box, "seq": e.seq, "ts": e.ts, "class": e.cls.wire, "kind": e.kind,
             "received": received, "raw": e.encode().decode()} for e in envs]


# ------------------------------------------------------------------------------------------ publisher child
def publish_child(args: argparse.Namespace) -> int:
    """Build the envelopes, connect, print READY, wait for GO on stdin, publish, print one JSON line."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    envs = make_envelopes(args.boxes, args.n, args.seed, args.seq_base)
    wire = [(TOPICS.up(e.box, e.cls, e.kind), e.encode(), e.id if e.cls is MsgClass.ALARM else None) for e in envs]
    host, port = args.broker.removeprefix("mqtt://").rsplit(":", 1)
    clients = []
    acked: list[dict[int, float]] = []
    for c in range(args.conns):
        cl = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{args.seed}-{c}")
        cl.max_inflight_messages_set(1000)
        cl.max_queued_messages_set(0)
        times: dict[int, float] = {}
        acked.append(times)
        cl.on_publish = lambda _c, _u, mid, _rc, _p, times=times: times.__setitem__(mid, time.monotonic())
        up = threading.Event()
        cl.on_connect = lambda *_a, up=up, **_k: up.set()
        cl.connect(host, int(port))
        cl.loop_start()
        if not up.wait(10):
            raise SystemExit("publisher could not connect")
        clients.append(cl)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    t_start = time.monotonic()
    infos: list[tuple[int, Any, str | None]] = []
    for i, (topic, payload, alarm) in enumerate(wire):
        c = int(envs[i].box[3:]) % args.conns  # a box's envelopes always on the same connection, in order
        infos.append((c, clients[c].publish(topic, payload, qos=1), alarm))
        if args.rate > 0:
            ahead = t_start + (i + 1) / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    for _c, info, _a in infos:
        info.wait_for_publish(120)
    t_done = time.monotonic()
    pubacks = {alarm: acked[c][info.mid] for c, info, alarm in infos if alarm is not None and info.mid in acked[c]}
    for cl in clients:
        cl.disconnect()
        cl.loop_stop()
    print(json.dumps({"t_start": t_start, "t_done": t_done, "n": len(wire), "pubacks": pubacks}), flush=True)
    return 0


class PublisherProcess:
    def __init__(self, broker: str, boxes: int, n: int, seed: int, seq_base: int, conns: int, rate: float) -> None:
        cmd = [sys.executable, "-m", "bench.county_ingest", "--publish-child", "--broker", broker, "--boxes",
               str(boxes), "--n", str(n), "--seed", str(seed), "--seq-base", str(seq_base), "--conns", str(conns),
               "--rate", str(rate)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"publisher child said {line!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=600)
        return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ phases
def pct(values: list[float], q: float) -> float:
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def lat_summary(ms: list[float]) -> dict[str, Any]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 1), "p99_ms": round(pct(ms, 0.99), 1),
            "max_ms": round(max(ms), 1) if ms else None}


async def baseline(url: str, rows: list[dict[str, Any]]) -> float:
    from sqlalchemy import insert

    from county.store import Database
    from county.store.tables import messages

    db = await Database.open(url)
    try:
        t = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            async with db.begin() as conn:
                await conn.execute(insert(messages), rows[i:i + BATCH])
        return len(rows) / (time.perf_counter() - t)
    finally:
        await db.close()


async def store_only(url: str, envs: list[Envelope]) -> float:
    """county.ingest's parse + Store.write on the same envelopes in batches of 500, no MQTT: the database
    part of ingest's cost."""
    import county.ingest as ci
    from county.store import Database

    db = await Database.open(url)
    try:
        now = int(time.time() * 1000)
        items = [ci.Incoming(TOPICS.up(e.box, e.cls, e.kind), e.encode(), i, 1, False, 0, now)
                 for i, e in enumerate(envs)]
        store = ci.Store(db)
        topics = Topics()
        t = time.perf_counter()
        for i in range(0, len(items), BATCH):
            await store.write([(it, ci.parse(topics, it)) for it in items[i:i + BATCH]])
        return len(items) / (time.perf_counter() - t)
    finally:
        await db.close()


def totals(ingest: Any) -> dict[str, int]:
    """The ingest's stats with its worker processes' (an older county.ingest has neither: its stats)."""
    return ingest.totals() if hasattr(ingest, "totals") else dict(ingest.stats)


def cpu_s(ingest: Any) -> float:
    """CPU seconds used so far by this process and the ingest's worker processes (user + system)."""
    total = time.process_time()
    workers = getattr(ingest, "workers", None)
    for proc in (workers.procs.values() if workers is not None else []):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _wait_stored(ingest: Any, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (t := totals(ingest))["stored"] + t["duplicates"] + t["quarantined"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ingest stored {t} of {n} within {timeout_s} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ingest.committed.wait(), 1.0)


async def ingest_phase(name: str, url: str, broker_url: str, args: argparse.Namespace,
                       profile: cProfile.Profile | None = None) -> dict[str, Any]:
    from county.ingest import Ingest, IngestConfig
    from county.server.events import EventHub
    from county.store import Database

    db = await Database.open(url)
    hub = EventHub()
    sub = hub.open(kinds=["alarm"], maxsize=10_000_000)
    seen: dict[str, float] = {}

    async def read() -> None:
        async for ev in sub:
            if ev.kind == "alarm":
                seen.setdefault(ev.data["id"], time.monotonic())

    reader = asyncio.create_task(read(), name="bench-hub-reader")
    extra = {"workers": args.workers} if args.workers > 1 else {}
    cfg = IngestConfig(urls=[broker_url], client_id=f"bench-{name}", **extra)
    ingest = Ingest(cfg, db, hub)
    out: dict[str, Any] = {}
    try:
        # 1. drain: the envelopes wait at the broker for ingest's persistent session (as after an outage of
        # the server), then ingest starts: its own rate, whatever the publisher's speed
        await ingest.start()
        await ingest.wait_subscribed(30)
        await ingest.close()
        pub = await asyncio.to_thread(PublisherProcess, broker_url, args.boxes, args.n, 1, 0, args.conns, 0)
        await asyncio.to_thread(pub.ready)
        pub.go()
        res = await asyncio.to_thread(pub.result)
        ingest = Ingest(cfg, db, hub)
        if profile is not None:
            profile.enable()
        t0 = time.monotonic()
        await ingest.start()
        cpu0 = cpu_s(ingest)  # the workers' CPU counts from their start (they start at once)
        await _wait_stored(ingest, args.n, 1800)
        t1 = time.monotonic()
        cpu = cpu_s(ingest) - cpu0
        if profile is not None:
            profile.disable()
        tot = totals(ingest)
        out.update(rate=args.n / (t1 - t0), seconds=t1 - t0, batches=tot["batches"],
                   cpu_ms_per_1000=1e6 * cpu / args.n,
                   mean_batch=tot["stored"] / max(1, tot["batches"]), stats=tot)
        # 2. live: ingest running while the publisher sends another n as fast as it can
        done = totals(ingest)["stored"]
        pub = await asyncio.to_thread(PublisherProcess, broker_url, args.boxes, args.n, 3, 5_000_000, args.conns, 0)
        await asyncio.to_thread(pub.ready)
        t0 = time.monotonic()
        pub.go()
        await _wait_stored(ingest, done + args.n, 1800)
        t1 = time.monotonic()
        res = await asyncio.to_thread(pub.result)
        await asyncio.sleep(0.5)  # let the reader task drain the hub
        burst = [1000 * (seen[a] - t) for a, t in res["pubacks"].items() if a in seen]
        out.update(live_rate=args.n / (t1 - t0), publisher_rate=res["n"] / (res["t_done"] - res["t_start"]),
                   burst_latency=lat_summary(burst),
                   alarms_missing_on_hub=sum(1 for a in res["pubacks"] if a not in seen))
        # 3. steady: a fleet at a fixed rate, after the burst
        n2 = int(args.steady_rate * args.steady_s)
        before = totals(ingest)
        live_before = ingest.live.announced if ingest.live is not None else 0
        pub = await asyncio.to_thread(PublisherProcess, broker_url, args.boxes, n2, 2, 10_000_000, args.conns,
                                      args.steady_rate)
        await asyncio.to_thread(pub.ready)
        pub.go()
        await _wait_stored(ingest, before["stored"] + n2, 300)
        res = await asyncio.to_thread(pub.result)
        await asyncio.sleep(0.5)
        steady = [1000 * (seen[a] - t) for a, t in res["pubacks"].items() if a in seen]
        out.update(steady_latency=lat_summary(steady), steady_n=n2,
                   steady_live_announced=(ingest.live.announced if ingest.live is not None else 0) - live_before,
                   steady_batches=totals(ingest)["batches"] - before["batches"],
                   live_announced=ingest.live.announced if ingest.live is not None else 0)
    finally:
        await ingest.close()
        sub.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        hub.close()
        await db.close()
    return out


def mqtt_floor(broker_url: str, args: argparse.Namespace) -> float:
    """paho alone: a persistent MQTT 5 session on the same shared subscription drains the same backlog,
    acknowledging each message on arrival and doing nothing else (the MQTT part of ingest's cost)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 2000

    import county.ingest as ci

    cls = getattr(ci, "_Client", mqtt.Client)  # paho as ingest uses it (buffered reads), where it has one

    def client() -> Any:
        c = cls(CallbackAPIVersion.VERSION2, client_id="bench-floor", protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(2000)
        return c

    subscribed = threading.Event()
    c = client()
    c.on_connect = lambda cl, *_a, **_k: cl.subscribe(f"$share/bench-floor/{TOPICS.all_up()}", qos=1)
    c.on_subscribe = lambda *_a, **_k: subscribed.set()
    c.connect(host, int(port), clean_start=False, properties=props)
    c.loop_start()
    if not subscribed.wait(30):
        raise RuntimeError("floor client did not subscribe")
    c.disconnect()
    c.loop_stop()
    pub = PublisherProcess(broker_url, args.boxes, args.n, 1, 0, args.conns, 0)
    pub.ready()
    pub.go()
    pub.result()
    count = [0]
    done = threading.Event()

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        count[0] += 1
        if count[0] >= args.n:
            done.set()

    c = client()
    c.on_message = on_message
    t, cpu = time.monotonic(), time.process_time()
    c.connect(host, int(port), clean_start=False, properties=props)
    c.loop_start()
    if not done.wait(900):
        raise RuntimeError(f"floor client got {count[0]} of {args.n}")
    rate = args.n / (time.monotonic() - t)
    print(f"(MQTT floor: {1e6 * (time.process_time() - cpu) / args.n:.0f} ms CPU per 1,000 messages)")
    c.disconnect()
    c.loop_stop()
    return rate


# ------------------------------------------------------------------------------------------ server probe
def regions_for(boxes: list[str]) -> dict[str, Any]:
    towns: list[dict[str, Any]] = []
    per_village = 10
    for vi in range(0, len(boxes), per_village):
        t = (vi // per_village) // 10
        if t == len(towns):
            towns.append({"id": f"town-{t}", "name": f"第{t}镇", "village": []})
        towns[t]["village"].append({"id": f"v-{vi // per_village}", "name": f"第{vi // per_village}村",
                                    "box": [{"id": b, "name": f"{b} 村委会", "groups": [f"town-{t}"]}
                                            for b in boxes[vi:vi + per_village]]})
    return {"county": {"id": "bench-county", "name": "测试县"}, "township": towns}


async def fill_big(url: str, boxes: int, n: int, alarms_n: int) -> None:
    """A database as after months of a fleet: `n` messages, `boxes` boxes, `alarms_n` alarms (30 % open)."""
    from sqlalchemy import func, insert, select, update

    from county.store import Database
    from county.store.tables import alarms, messages
    from county.store.tables import boxes as boxes_t

    db = await Database.open(url)
    try:
        now = int(time.time() * 1000)
        async with db.begin() as conn:
            await conn.execute(insert(boxes_t), [
                {"id": box_id(b), "state": "online" if b % 10 else "offline", "state_ts": now, "version": "1.4.0",
                 "groups": [f"town-{b // 100}"], "first_seen": now - 10**9, "last_seen": now - b, "last_seq": n,
                 "backlog": b % 7, "heartbeat": {"version": "1.4.0", "outbox": {"depth": {"telemetry": 1}}},
                 "heartbeat_ts": now} for b in range(boxes)])
        rnd = random.Random(3)
        chunk = 20_000
        for start in range(0, n, chunk):
            envs = make_envelopes(boxes, min(chunk, n - start), 100 + start, seq_base=start)
            rows = message_rows(envs, now)
            for i in range(0, len(rows), 5000):
                async with db.begin() as conn:
                    await conn.execute(insert(messages), rows[i:i + 5000])
        async with db.begin() as conn:  # the per-box seq counters ingest keeps (as migration 0003 backfills)
            of_box = messages.c.box == boxes_t.c.id
            await conn.execute(update(boxes_t).values(
                stored=select(func.count()).select_from(messages).where(of_box).scalar_subquery(),
                min_seq=select(func.min(messages.c.seq)).where(of_box).scalar_subquery()))
        states = ["new", "acknowledged", "assigned", "resolved"]
        arows = []
        for i in range(alarms_n):
            st = "resolved" if rnd.random() < 0.7 else rnd.choice(states[:3])
            ts = now - rnd.randrange(90 * 86_400_000)
            arows.append({"id": f"{box_id(i % boxes)}:a{i}", "box": box_id(i % boxes), "kind": "sos", "wearer": "w",
                          "device": "d", "ts": ts, "received": ts, "pos": {"lat": 21.9, "lon": 101.2},
                          "data": {"wearer": "w"}, "state": st,
                          "acked_by": None if st == "new" else "op", "acked_at": None if st == "new" else ts + 60_000,
                          "resolved_by": "op" if st == "resolved" else None,
                          "resolved_at": ts + 900_000 if st == "resolved" else None})
        async with db.begin() as conn:
            await conn.execute(insert(alarms), arows)
    finally:
        await db.close()


def rss_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from sqlalchemy import func, insert, select

    from county.ingest import Ingest, IngestConfig
    from county.regions import parse_regions
    from county.server.app import create_app
    from county.server.auth import hash_password
    from county.server.events import EventHub
    from county.server.users import create_session
    from county.store import Database
    from county.store.tables import alarms, boxes, messages, users
    from tests.county_api import config_for

    db = await Database.open(args.db)
    hub = EventHub()
    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    config, _ = config_for(tmp, args.broker)
    async with db.connect() as conn:
        ids = sorted(r[0] for r in (await conn.execute(select(boxes.c.id))).all())
        n_msgs = (await conn.execute(select(func.count()).select_from(messages))).scalar_one()
        n_alarms = (await conn.execute(select(func.count()).select_from(alarms))).scalar_one()
    regions = parse_regions(regions_for(ids))
    ingest = Ingest(IngestConfig(urls=[args.broker], client_id="bench-probe"), db, hub)
    await ingest.start()
    await ingest.wait_subscribed(30)
    now = int(time.time() * 1000)
    async with db.begin() as conn:
        await conn.execute(insert(users), [{"name": "bench", "role": "admin", "scope": None,
                                            "password_hash": hash_password("bench bench bench"), "disabled": False,
                                            "created_at": now}])
        token = (await create_session(conn, "bench", now, 3_600_000)).token
    app = create_app(config, db, hub, None, regions=regions)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {"boxes": len(ids), "messages": n_msgs, "alarms": n_alarms}
    try:
        for path in ("/api/v1/boxes", "/api/v1/alarms"):
            times = []
            for i in range(8):
                t = time.perf_counter()
                r = await client.get(path, headers=headers)
                dt_ms = 1000 * (time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
                if i:
                    times.append(dt_ms)
            out[path] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
                         "items": len(r.json()), "bytes": len(r.content)}
        out["rss"] = rss_kb()
    finally:
        await client.aclose()
        await ingest.close()
        hub.close()
        await db.close()
    return out


def run_probe(db_url: str, broker: str) -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-m", "bench.county_ingest", "--probe-child", "--db", db_url,
                        "--broker", broker], cwd=REPO, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"probe failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main
@contextlib.contextmanager
def mosquitto(tmp: Path, name: str) -> Iterator[Any]:
    from tests.support import Mosquitto

    d = tmp / f"broker-{name}"
    d.mkdir()
    b = Mosquitto(d, persistence=False, extra_conf="max_queued_messages 0\n").start()
    try:
        yield b
    finally:
        b.stop()


def show(name: str, base: float, r: dict[str, Any], probe_r: dict[str, Any] | None) -> None:
    print(f"\n== {name}")
    print(f"baseline executemany: {base:,.0f} rows/s")
    print(f"ingest (drain of a broker backlog): {r['rate']:,.0f} envelopes/s ({r['seconds']:.1f} s), "
          f"ratio {r['rate'] / base:.2f}; {r['batches']} batches, mean {r['mean_batch']:.0f}; "
          f"ingest CPU {r['cpu_ms_per_1000']:.0f} ms per 1,000 envelopes")
    print(f"ingest (live, publisher sending at once): {r['live_rate']:,.0f} envelopes/s, ratio "
          f"{r['live_rate'] / base:.2f}; the publisher process alone reached {r['publisher_rate']:,.0f}/s")
    print(f"stats: {r['stats']}")
    if r["stats"]["store_errors"]:
        print(f"WARNING: {r['stats']['store_errors']} batches failed and were stored one by one (see the log above)")
    bl, sl = r["burst_latency"], r["steady_latency"]
    print(f"alarm PUBACK -> event stream during the burst: n={bl['n']} p50 {bl['p50_ms']} ms p99 {bl['p99_ms']} ms "
          f"max {bl['max_ms']} ms (missing on hub: {r['alarms_missing_on_hub']})")
    print(f"  steady {r['steady_n']} envelopes: n={sl['n']} p50 {sl['p50_ms']} ms p99 {sl['p99_ms']} ms "
          f"max {sl['max_ms']} ms (announced from the wire by the LiveFeed: {r['steady_live_announced']})")
    if probe_r:
        print(f"server with {probe_r['boxes']} boxes, {probe_r['messages']:,} messages, {probe_r['alarms']} alarms: "
              f"RSS {probe_r['rss']['VmRSS'] / 1024:.1f} MB (peak {probe_r['rss']['VmHWM'] / 1024:.1f} MB)")
        for path in ("/api/v1/boxes", "/api/v1/alarms"):
            x = probe_r[path]
            print(f"  GET {path}: median {x['median_ms']} ms, max {x['max_ms']} ms ({x['items']} items, "
                  f"{x['bytes']:,} bytes)")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-county-"))
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores; "
          f"{args.n:,} envelopes from {args.boxes} boxes over {args.conns} connections")
    envs = make_envelopes(args.boxes, args.n, 1)
    rows = message_rows(envs, int(time.time() * 1000))
    targets: list[tuple[str, Any, Any]] = [("sqlite", lambda n: f"sqlite:///{tmp / (n + '.db')}", None)]
    cluster = None
    if not args.no_pg:
        from tests.pgcluster import PgCluster, PgMissing

        try:
            cluster = PgCluster.create().start()
            targets.append(("postgresql", cluster.create_database, cluster))
        except PgMissing as e:
            print(f"PostgreSQL skipped: {e}")
    results: dict[str, Any] = {}
    try:
        for name, make_url, _c in targets:
            base = await baseline(make_url("base"), rows)
            store_rate = await store_only(make_url("store"), envs)
            prof = cProfile.Profile() if args.profile and name == "sqlite" else None
            with mosquitto(tmp, name) as broker:
                floor = await asyncio.to_thread(mqtt_floor, broker.url, args) if name == "sqlite" else None
                url = make_url("ingest")
                r = await ingest_phase(name, url, broker.url, args, prof)
                probe_r = None
                if args.big:
                    big = make_url("big")
                    t = time.perf_counter()
                    await fill_big(big, 2000, 1_000_000, 10_000)
                    print(f"({name}: 1M messages filled in {time.perf_counter() - t:.0f} s)")
                    probe_r = run_probe(big, broker.url)
                else:
                    probe_r = run_probe(url, broker.url)
            if floor is not None:
                print(f"\nMQTT floor: paho alone receives and acknowledges the backlog at {floor:,.0f} messages/s")
                results["mqtt_floor"] = floor
            print(f"\n{name}: parse + Store.write alone (no MQTT): {store_rate:,.0f} envelopes/s")
            show(name, base, r, probe_r)
            results[name] = {"baseline": base, "store_only": store_rate, **r, "probe": probe_r}
            if prof is not None:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(35)
                print(s.getvalue())
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
                print(s.getvalue())
    finally:
        if cluster is not None:
            cluster.stop()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.county_ingest", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 envelopes from 200 boxes, a short steady phase")
    ap.add_argument("--big", action="store_true", help="the server step on 1M messages and 2,000 boxes")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--profile", action="store_true", help="cProfile the SQLite ingest (event loop thread)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--boxes", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--conns", type=int)
    ap.add_argument("--steady-rate", type=float, default=1000.0)
    ap.add_argument("--workers", type=int, default=1, help="ingest processes (IngestConfig.workers; default 1)")
    ap.add_argument("--steady-s", type=float)
    # children
    ap.add_argument("--publish-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seq-base", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.boxes = args.boxes or (200 if args.quick else 2000)
    args.n = args.n or (20_000 if args.quick else 200_000)
    args.conns = args.conns or 16
    args.steady_s = args.steady_s or (5.0 if args.quick else 20.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.publish_child:
        return publish_child(args)
    if args.probe_child:
        print(json.dumps(asyncio.run(probe(args))))
        return 0
    results = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
