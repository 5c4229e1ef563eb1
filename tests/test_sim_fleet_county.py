"""`village sim fleet` feeding a real `village county serve` through a real mosquitto, on SQLite and PostgreSQL:
every box the fleet ran is in the database, every envelope the broker acknowledged to a box is stored once
(each box's seqs 1..n with no gap), every box's retained state reached it, nothing was quarantined.

A modest fleet (200 boxes, a few seconds at 20x speed: about 2,000 envelopes) keeps it quick; the bench and
docs/county-server.md show the thousands."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from county.store import Database
from county.store.tables import boxes, messages, quarantine
from tests.county_ingest_proc import Publisher, envelope, until
from tests.support import Mosquitto, free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
BOXES = 200


def _config(tmp_path: Path, db_url: str, broker: Mosquitto, port: int) -> Path:
    cfg = tmp_path / "county.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[database]
url = "{db_url}"
[mqtt]
url = "{broker.url}"
client_id = "fleet-county-test"
[county]
regions = "{REPO / 'county/regions.example.toml'}"
""", encoding="utf-8")
    return cfg


async def _stored(db: Database, box: str) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(messages)
                                       .where(messages.c.box == box))).scalar_one())


async def test_every_fleet_box_and_envelope_is_in_the_county_database(db_url: str, broker: Mosquitto,
                                                                     tmp_path: Path) -> None:
    port = free_port()
    serve = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "agent.cli", "county", "serve", "-c",
                           str(_config(tmp_path, db_url, broker, port))],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = await Database.open(db_url)
    probe = Publisher(broker.url, client_id="fleet-probe")
    try:
        await asyncio.to_thread(wait_port, port, 60)
        # the shared subscription exists once a probe envelope is stored (mosquitto drops what is published
        # to a shared subscription nobody has made yet); a new probe each round
        seq = [0]

        async def probe_stored() -> bool:
            seq[0] += 1
            probe.publish([envelope("probe-box", seq[0], "telemetry", "heartbeat", {})])
            return await _stored(db, "probe-box") > 0

        await until(probe_stored, within_s=60)
        fleet = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "agent.cli", "sim", "fleet", "--boxes", str(BOXES),
                             "--broker", broker.url, "--duration", "4", "--speed", "20", "--ramp", "1", "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=180)
        assert fleet.returncode == 0, fleet.stderr[-2000:]
        result = json.loads(fleet.stdout)
        assert result["boxes"] == BOXES and result["connected"] == BOXES and result["sent"] > BOXES * 4
        names = [f"fleet-{i:05d}" for i in range(BOXES)]

        async def fleet_rows() -> tuple[int, dict[str, tuple[str | None, int, int | None, int]]]:
            async with db.connect() as conn:
                n = int((await conn.execute(select(func.count()).select_from(messages)
                                            .where(messages.c.box.like("fleet-%")))).scalar_one())
                rows = (await conn.execute(select(boxes.c.id, boxes.c.state, boxes.c.stored, boxes.c.last_seq,
                                                  boxes.c.min_seq).where(boxes.c.id.like("fleet-%")))).all()
            return n, {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

        async def all_in() -> bool:
            n, rows = await fleet_rows()
            return n >= result["sent"] and len(rows) == BOXES and all(r[0] == "offline" for r in rows.values())

        await until(all_in, within_s=60)
        n, rows = await fleet_rows()
        assert sorted(rows) == names
        for box, (_state, stored, last_seq, min_seq) in rows.items():
            assert min_seq == 1 and stored == last_seq, (box, stored, last_seq, min_seq)  # 1..n, no gap
        assert sum(r[1] for r in rows.values()) == n  # the counters agree with the rows: stored once each
        async with db.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(quarantine))).scalar_one() == 0
        started = time.monotonic()
        serve.terminate()
        assert await asyncio.to_thread(serve.wait, 30) == 0, serve.stderr.read() if serve.stderr else ""
        assert time.monotonic() - started < 30
    finally:
        probe.close()
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        await db.close()
