"""Signed updates: bytes per box when only the project changed, command -> healthy, and a 200-box rollout.

1. One real box (the agent run by systemd/village-launch from a release root in a temp dir, a real
   mosquitto, a real HTTPS server with client certificates): A -> B where only the project's wheel
   differs. Bytes the server sent for B against the whole bundle (baseline: a box with an empty wheel
   store), and the time from the command to each receipt step up to `healthy`.
2. The county server (`create_app` under uvicorn, TLS with client certificates required, SQLite) rolls B
   out to N simulated boxes (pilot, then waves, the server's own loop): each simulated box fetches the
   manifest and the project wheel with the agent's own downloader (agent/update/fetch.py: Range, the
   `RateLimit` cap, hash checks) under its own client certificate, then reports `finished` the way the
   ingest stores it. Reported: wall time, waves, bytes, and each box's measured rate against its cap.

    .venv/bin/python bench/update.py [--boxes 200] [--cap 131072] [--wave 50] [--skip-box]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from agent.protocol import jws  # noqa: E402
from agent.update.fetch import RateLimit, Stats, fetch_bytes, fetch_file, tls_context  # noqa: E402
from county.regions import parse_regions  # noqa: E402
from county.server.app import create_app  # noqa: E402
from county.server.events import EventHub  # noqa: E402
from county.server.publish import Publisher  # noqa: E402
from county.server.routes_releases import run as run_rollouts  # noqa: E402
from county.server.users import create_session  # noqa: E402
from county.store import Database  # noqa: E402
from county.store.tables import messages, receipts, users  # noqa: E402
from tests.county_api import config_for, password_hash  # noqa: E402
from tests.pki import TestCA  # noqa: E402
from tests.support import Collector, Mosquitto, free_port  # noqa: E402
from tests.update_harness import A, B, Box, Bundles, ReleaseServer, provision_template, wait_receipt  # noqa: E402


def one_box(tmp: Path, bundles: Bundles, ca: TestCA, cap: int) -> None:
    template = provision_template(bundles, tmp / "template")
    (tmp / "broker").mkdir()
    broker = Mosquitto(tmp / "broker").start()
    server = ReleaseServer(tmp / "www", ca)
    county = Collector(broker.url, client_id="bench-county").start()
    box = Box(tmp / "box", template, bundles, ca, broker.url, server, max_rate_bytes_s=cap).start()
    try:
        b = bundles.bundle("b", B)
        url = server.publish(b)
        whole = sum(w.size for w in b.manifest.wheels) + (b.dir / "manifest.jws").stat().st_size
        t0 = time.monotonic()
        cmd = box.update(county, url, b)
        marks = {}
        for state, step in (("started", "downloaded"), ("started", "installed"), ("started", "switching"),
                            ("finished", "healthy")):
            wait_receipt(county, box, cmd, 300, state=state, step=step)
            marks[step] = time.monotonic() - t0
        sent = server.sent
        project = b.manifest.project_wheel.size
        print(f"one box {A} -> {B} (cap {cap} B/s):")
        print(f"  bytes downloaded      {sent:>10}  (project wheel {project}, manifest + overhead "
              f"{sent - project}; whole bundle {whole}: {sent / whole:.1%} of it)")
        print("  command -> " + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()))
    finally:
        box.stop()
        county.stop()
        server.close()
        broker.stop()


async def fleet(tmp: Path, bundles: Bundles, ca: TestCA, n: int, cap: int, wave: int) -> None:
    (tmp / "broker2").mkdir()
    broker = Mosquitto(tmp / "broker2").start()
    ids = [f"box-{i:03d}" for i in range(n)]
    regions = parse_regions({"county": {"id": "bench", "name": "测试县"}, "township": [
        {"id": f"town-{t}", "name": f"镇{t}", "village": [
            {"id": f"v-{t}", "name": f"村{t}", "box": [{"id": b, "name": b, "groups": ["all"]}
                                                      for b in ids[t * 50:(t + 1) * 50]]}]}
        for t in range((n + 49) // 50)]})
    config, public = config_for(tmp, broker.url)
    db = await Database.open(f"sqlite:///{tmp}/county.db")
    hub = EventHub()
    publisher = Publisher(list(config.mqtt.urls), client_id="bench-pub")
    await publisher.start()
    app = create_app(config, db, hub, publisher, regions=regions)
    async with db.begin() as conn:
        await conn.execute(insert(users).values(name="admin", role="admin", scope=None, password_hash=password_hash(),
                                                disabled=False, created_at=0))
        token = (await create_session(conn, "admin", int(time.time() * 1000), 3_600_000)).token
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://county",
                            headers={"Authorization": f"Bearer {token}"})
    b = bundles.bundle("fleet-b", B)
    r = await api.post("/api/v1/releases", json={"manifest": (b.dir / "manifest.jws").read_text()})
    for file in r.json()["missing"]:
        await api.put(f"/api/v1/releases/{B}/wheels/{file}", content=(b.dir / "wheels" / file).read_bytes())
    issued = ca.server("localhost")
    port = free_port()
    from county.server.routes_releases import box_app  # the boxes' listener ([server] box_listen)

    server = uvicorn.Server(uvicorn.Config(box_app(app), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", ssl_certfile=str(issued.cert), ssl_keyfile=str(issued.key),
                                           ssl_ca_certs=str(ca.pem), ssl_cert_reqs=ssl.CERT_REQUIRED))
    http = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(run_rollouts(app, stop, tick_s=0.2))
    loop = asyncio.get_running_loop()
    project = b.manifest.project_wheel
    rates: list[float] = []
    total = Stats()
    lock = threading.Lock()
    seq = iter(range(1, 10**9))

    def simulated_box(box: str, payload: dict[str, Any]) -> None:
        ident = ca.client(box)
        ctx = tls_context(ca.pem, ident.cert, ident.key)
        stats = Stats()
        start = time.monotonic()
        token_bytes = fetch_bytes(payload["data"]["url"], ctx, 1 << 20, stats)
        assert hashlib.sha256(token_bytes).hexdigest() == payload["data"]["manifest_sha256"]
        dest = tmp / "fleet" / box / "w.whl"
        dest.parent.mkdir(parents=True)
        fetch_file(payload["data"]["url"].rsplit("/", 1)[0] + "/wheels/" + project.file, dest, size=project.size,
                   sha256=project.sha256, ctx=ctx, rate=RateLimit(cap), stop=threading.Event(), stats=stats)
        took = time.monotonic() - start
        with lock:
            rates.append(stats.bytes / took)
            total.bytes += stats.bytes
            n_seq = next(seq)
        env = {"box": box, "seq": n_seq, "ts": int(time.time() * 1000), "class": "receipt", "kind": "cmd",
               "data": {"cmd": payload["id"], "state": "finished", "step": "healthy", "version": B}}

        async def store() -> None:  # as the ingest stores a receipt
            async with db.begin() as conn:
                eid = f"{box}:{n_seq}"
                row = {"id": eid, "box": box, "seq": n_seq, "ts": env["ts"], "class": "receipt", "kind": "cmd",
                       "received": env["ts"], "raw": json.dumps(env)}
                await conn.execute(insert(messages).values(**row))
                await conn.execute(insert(receipts).values(cmd=payload["id"], box=box, state="finished", reason=None,
                                                           ts=env["ts"], envelope=eid))
        asyncio.run_coroutine_threadsafe(store(), loop).result(60)

    pool = ThreadPoolExecutor(max_workers=wave)
    boxes_side = Collector(broker.url, topics=("vc/v1/box/+/cmd",))
    boxes_side.client.on_message = lambda c, u, m: pool.submit(
        simulated_box, m.topic.split("/")[3], jws.verify(bytes(m.payload), {"county-test": public})[1])
    boxes_side.start()
    t0 = time.monotonic()
    r = await api.post("/api/v1/rollouts", json={"version": B, "to": ["group:all"], "pilot": 5, "wave_size": wave,
                                                  "max_failure_pct": 5, "base_url": f"https://localhost:{port}"})
    rid = r.json()["id"]
    while True:
        doc = (await api.get(f"/api/v1/rollouts/{rid}")).json()
        if doc["state"] in ("done", "halted"):
            break
        await asyncio.sleep(0.2)
    wall = time.monotonic() - t0
    print(f"rollout of {B} to {n} simulated boxes (pilot 5, waves of {wave}, cap {cap} B/s each):")
    print(f"  state {doc['state']} after {wall:.1f} s in {doc['waves']} waves; counts {doc['counts']}")
    print(f"  bytes per box {total.bytes / max(1, len(rates)):.0f} (project wheel {project.size} + manifest)")
    print(f"  measured rate per box: median {statistics.median(rates):.0f} B/s, max {max(rates):.0f} B/s "
          f"({max(rates) / cap:.2f} x the cap; one second of burst is allowed)")
    stop.set()
    await loop_task
    boxes_side.stop()
    pool.shutdown()
    server.should_exit = True
    await http
    await api.aclose()
    hub.close()
    await publisher.close()
    await db.close()
    broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boxes", type=int, default=200)
    ap.add_argument("--cap", type=int, default=128 * 1024, help="bytes per second per box")
    ap.add_argument("--wave", type=int, default=50)
    ap.add_argument("--skip-box", action="store_true", help="only the fleet rollout")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp_s:
        tmp = Path(tmp_s)
        bundles = Bundles(tmp / "bundles")
        ca = TestCA(tmp / "ca")
        if not args.skip_box:
            one_box(tmp, bundles, ca, args.cap)
        asyncio.run(fleet(tmp, bundles, ca, args.boxes, args.cap, args.wave))
    return 0


if __name__ == "__main__":
    sys.exit(main())
