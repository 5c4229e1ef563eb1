"""kill -9 of the ingest process in the middle of a 20,000-envelope burst loses nothing and stores nothing twice.

The burst is published QoS 1 and the publisher waits for every PUBACK, so the broker holds all of it. The
first half is published with the ingest running; the ingest is killed once it stored more than 2,000 of
them (so, by construction, in the middle: only 10,000 exist yet); the second half is published while it is
dead (the broker queues it for the ingest's persistent session); the restarted ingest (same client id)
gets the rest, including what it had received but not committed (never acknowledged) before the kill.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import func, select

from county.store import Database
from county.store.tables import alarms, messages, positions
from tests.county_ingest_proc import IngestProcess, Publisher, envelope, sos, until
from tests.support import Mosquitto

BOXES, PER_BOX = 100, 200  # 20,000 envelopes
KILL_AFTER = 2_000


def burst() -> list[tuple[str, bytes]]:
    out = []
    for seq in range(1, PER_BOX + 1):  # interleaved across boxes, as a fleet sends
        for i in range(BOXES):
            box = f"box-{i:03d}"
            if seq % 50 == 0:
                out.append(sos(box, seq, wearer=f"w{i}"))
            else:
                out.append(envelope(box, seq, "telemetry", "position",
                                    {"wearer": f"w{i}", "device": "b", "pos": {"lat": 22.0, "lon": 113.0}}))
    return out


async def count(db: Database, table: object = messages) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def test_sigkill_mid_burst_loses_nothing_and_stores_once(db_url: str, broker: Mosquitto, tmp_path: Path) -> None:
    msgs = burst()
    half = len(msgs) // 2
    db = await Database.open(db_url)  # migrated here; the child opens it too
    proc = IngestProcess(db_url, broker.url, "county-ingest-kill", tmp_path / "ingest.log").start()
    pub = Publisher(broker.url)
    killed = threading.Event()
    published_second = threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            pub.publish(msgs[:half])
            if not killed.wait(60):
                raise TimeoutError("the ingest was never killed")
            pub.publish(msgs[half:])
            published_second.set()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    t = threading.Thread(target=publish)
    t.start()
    try:
        await until(lambda: _gt(db, KILL_AFTER), 60)
        proc.kill()
        at_kill = await count(db)
        killed.set()
        assert KILL_AFTER < at_kill < len(msgs)
        await asyncio.to_thread(published_second.wait, 60)
        assert not errors, errors
        assert await count(db) == at_kill  # nobody ingested while it was dead
        proc.start()
        await until(lambda: _eq(db, len(msgs)), 90)
        async with db.connect() as conn:
            ids = {r[0] for r in (await conn.execute(select(messages.c.id))).all()}
        expected = {f"box-{i:03d}:{s}" for i in range(BOXES) for s in range(1, PER_BOX + 1)}
        assert ids == expected
        n_alarms = BOXES * (PER_BOX // 50)
        assert await count(db, alarms) == n_alarms
        assert await count(db, positions) == len(msgs)  # each envelope's position once (alarms carry one too)
        assert proc.stop() == 0
    finally:
        killed.set()
        t.join(60)
        pub.close()
        proc.kill()
        await db.close()


async def _gt(db: Database, n: int) -> bool:
    return await count(db) > n


async def _eq(db: Database, n: int) -> bool:
    return await count(db) >= n
