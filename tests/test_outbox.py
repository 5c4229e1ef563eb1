"""The outbox on a real SQLite file: order, seq, group commit, eviction, TTL, corruption, full disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.clock import ManualClock
from agent.outbox import Outbox, OutboxError, OutboxRefused
from agent.protocol.envelope import Envelope, MsgClass

A, R, E, T = MsgClass.ALARM, MsgClass.RECEIPT, MsgClass.EVENT, MsgClass.TELEMETRY


@contextlib.asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[Outbox]:
    task = asyncio.create_task(outbox.run(lambda: None), name="outbox.run")
    await outbox.wait_open()
    try:
        yield outbox
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make(path: Path, **kw: object) -> Outbox:
    opts: dict[str, object] = {"max_bytes": 10_000_000, "telemetry_ttl_s": 3600.0, "commit_interval_s": 0.01}
    opts.update(kw)
    return Outbox(path, "box-1", **opts)  # type: ignore[arg-type]


async def drain_all(outbox: Outbox) -> list[Envelope]:
    rows = await outbox.next_batch(1_000_000)
    return [Envelope.decode(r.body) for r in rows]


def rows_in_file(path: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT seq, cls, kind FROM outbox ORDER BY seq").fetchall()


async def test_drains_by_class_then_fifo_and_seq_rises(tmp_path: Path) -> None:
    async with running(make(tmp_path / "o.db")) as ob:
        order = [T, E, A, R, T, A, E, R, T]
        for i, cls in enumerate(order):
            await ob.send(cls, f"k{i}", {"i": i})
        got = await drain_all(ob)
    assert [e.seq for e in sorted(got, key=lambda e: e.seq)] == list(range(1, len(order) + 1))
    assert [(e.cls, e.data["i"]) for e in got] == [
        (A, 2), (A, 5), (R, 3), (R, 7), (E, 1), (E, 6), (T, 0), (T, 4), (T, 8)]
    assert all(e.id == f"box-1:{e.seq}" for e in got)


async def test_alarm_is_on_disk_when_send_returns(tmp_path: Path) -> None:
    async with running(make(tmp_path / "o.db", commit_interval_s=5.0)) as ob:
        env = await ob.send(A, "sos", {"wearer": "W1"})
        # another connection (another process would see the same) finds it committed
        assert rows_in_file(tmp_path / "o.db") == [(env.seq, int(A), "sos")]


async def test_burst_is_group_committed(tmp_path: Path) -> None:
    async with running(make(tmp_path / "o.db", commit_interval_s=0.05)) as ob:
        futures = [ob.send_nowait(T, "position", {"i": i}) for i in range(5000)]
        envs = await asyncio.gather(*futures)
        assert [e.seq for e in envs] == list(range(1, 5001))
        assert ob.commits <= 5, ob.commits
        assert ob.depth()[T] == 5000


async def test_acked_rows_are_deleted_and_seq_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with running(make(path)) as ob:
        for i in range(10):
            await ob.send(E, "e", {"i": i})
        for row in await ob.next_batch(100):
            ob.ack(row.seq)
        await ob.send(E, "after", {})  # the commit carrying it deletes the acked rows too
        assert [r[0] for r in rows_in_file(path)] == [11]
    async with running(make(path)) as ob:
        for row in await ob.next_batch(100):
            ob.ack(row.seq)
        env = await ob.send(E, "reopened", {})
    assert env.seq == 12
    assert rows_in_file(path) == [(12, int(E), "reopened")]


async def test_rewind_hands_out_unacked_rows_again(tmp_path: Path) -> None:
    async with running(make(tmp_path / "o.db")) as ob:
        for i in range(5):
            await ob.send(T, "t", {"i": i})
        first = await ob.next_batch(100)
        assert await ob.next_batch(100) == []
        ob.ack(first[0].seq)
        ob.rewind()
        again = await ob.next_batch(100)
        assert [r.seq for r in again] == [r.seq for r in first[1:]]


async def test_eviction_order_and_counters(tmp_path: Path) -> None:
    # each envelope is ~100 bytes; room for about 20
    async with running(make(tmp_path / "o.db", max_bytes=2000)) as ob:
        size = len((await ob.send(T, "t", {"i": 0})).encode())
        for i in range(1, 6):
            await ob.send(T, "t", {"i": i})
        for i in range(6):
            await ob.send(E, "e", {"i": i})
        for i in range(6):
            await ob.send(A, "a", {"i": i})
        assert sum(ob.depth().values()) * size <= 2000 + 3 * size
        # more alarms: telemetry goes first, oldest first, then events
        for i in range(6, 16):
            await ob.send(A, "a", {"i": i})
        left = await drain_all(ob)
        kinds = [(e.kind, e.data["i"]) for e in left]
        assert [k for k in kinds if k[0] == "a"] == [("a", i) for i in range(16)]
        assert all(k[0] != "t" for k in kinds), "telemetry must be evicted before any event"
        events_left = [i for k, i in kinds if k == "e"]
        assert events_left == list(range(6 - len(events_left), 6)), "events evicted oldest first"
        c = ob.counters
        assert c["evicted.telemetry"] == 6
        assert len(events_left) < 6, "alarms over the limit push out events once telemetry is gone"
        assert c["evicted.event"] == 6 - len(events_left)
        assert "evicted.alarm" not in c and "evicted.receipt" not in c


async def test_full_of_alarms_refuses_telemetry_and_events_but_takes_alarms(tmp_path: Path) -> None:
    async with running(make(tmp_path / "o.db", max_bytes=1000)) as ob:
        for i in range(20):
            await ob.send(A if i % 2 else R, "x", {"i": i})
        with pytest.raises(OutboxRefused):
            await ob.send(T, "t", {})
        with pytest.raises(OutboxRefused):
            await ob.send(E, "e", {})
        await ob.send(A, "still", {})
        assert ob.depth()[A] == 11 and ob.depth()[R] == 10
        assert ob.counters["refused.telemetry"] == 1 and ob.counters["refused.event"] == 1


async def test_telemetry_never_evicts_an_event(tmp_path: Path) -> None:
    async with running(make(tmp_path / "o.db", max_bytes=1000)) as ob:
        for i in range(8):
            await ob.send(E, "e", {"i": i})
        with pytest.raises(OutboxRefused):
            await ob.send(T, "t", {"pad": "x" * 400})
        assert ob.depth()[E] == 8


async def test_counters_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with running(make(path, max_bytes=500)) as ob:
        for i in range(20):
            await ob.send(T, "t", {"i": i})
        evicted = ob.counters["evicted.telemetry"]
        assert evicted > 0
    async with running(make(path, max_bytes=500)) as ob:
        assert ob.counters["evicted.telemetry"] == evicted


async def test_telemetry_expires_after_ttl(tmp_path: Path) -> None:
    clock = ManualClock()
    async with running(make(tmp_path / "o.db", telemetry_ttl_s=600.0, clock=clock)) as ob:
        await ob.send(T, "old", {})
        await ob.send(E, "old-event", {})
        clock.advance(700)
        await ob.send(T, "new", {})  # the commit sweeps expired telemetry
        left = await drain_all(ob)
        assert [e.kind for e in left] == ["old-event", "new"]
        assert ob.counters["expired.telemetry"] == 1


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(b"this is not a database at all" * 100),
    lambda p: p.write_bytes(p.read_bytes()[:100] + b"\x00garbage" * 500),
])
async def test_corrupt_database_is_moved_aside_and_seq_continues(tmp_path: Path,
                                                                 damage: Callable[[Path], None]) -> None:
    path = tmp_path / "o.db"
    async with running(make(path)) as ob:
        for i in range(3):
            last = await ob.send(A, "a", {"i": i})
    damage(path)
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)
    async with running(make(path)) as ob:
        assert ob.reset_reason is not None
        await asyncio.sleep(0.05)
        env = await ob.send(A, "after-reset", {})
        got = await drain_all(ob)
    assert env.seq > last.seq, "a reset must never bring an old seq back"
    assert [e.kind for e in got] == ["after-reset", "outbox_reset"]
    assert "moved aside" in got[1].data["reason"]
    assert list(tmp_path.glob("o.db.corrupt-*")), "the bad file is kept for diagnosis"


async def test_full_disk_refuses_telemetry_keeps_alarms(tmp_path: Path) -> None:
    # max_file_bytes caps the file with SQLite's max_page_count: SQLITE_FULL exactly as on a full disk
    async with running(make(tmp_path / "o.db", max_bytes=10**9, max_file_bytes=64 * 1024)) as ob:
        results = []
        for _burst in range(8):
            futures = [ob.send_nowait(T, "t", {"i": i, "pad": "x" * 200}) for i in range(100)]
            results += await asyncio.gather(*futures, return_exceptions=True)
        refused = sum(isinstance(r, OutboxRefused) for r in results)
        stored = sum(isinstance(r, Envelope) for r in results)
        assert refused > 0 and stored > 0 and refused + stored == len(results)
        alarms = [await asyncio.wait_for(ob.send(A, "sos", {"i": i, "pad": "y" * 200}), 10) for i in range(5)]
        got = await drain_all(ob)
        assert [e.seq for e in got if e.cls is A] == [a.seq for a in alarms]
        assert ob.counters["refused.telemetry"] >= refused


async def test_envelope_bodies_are_contract_json(tmp_path: Path) -> None:
    async with running(make(tmp_path / "o.db")) as ob:
        await ob.send(A, "sos", {"wearer": "W1", "note": "救命"}, ts_ms=1763900000123)
        (row,) = await ob.next_batch(1)
    doc = json.loads(row.body)
    assert doc == {"v": 1, "id": "box-1:1", "box": "box-1", "seq": 1, "ts": 1763900000123, "class": "alarm",
                   "kind": "sos", "data": {"wearer": "W1", "note": "救命"}}


async def test_a_stop_during_a_commit_still_stores_the_alarm(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = make(path)
    task = asyncio.create_task(ob.run(lambda: None), name="outbox.run")
    await ob.wait_open()
    slow = ob._commit

    async def slow_commit(*args: object) -> object:  # hold the commit in flight while the stop arrives
        await asyncio.sleep(0.2)
        return await slow(*args)  # type: ignore[arg-type]

    ob._commit = slow_commit  # type: ignore[method-assign]
    future = ob.send_nowait(A, "sos", {"wearer": "W1"})
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    env = await asyncio.wait_for(future, 5)
    assert rows_in_file(path) == [(env.seq, int(A), "sos")]


async def test_a_newer_schema_is_refused_and_the_rows_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with running(make(path)) as ob:
        await ob.send(A, "sos", {})
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    ob = make(path)
    with pytest.raises(OutboxError, match="newer than this agent"):
        await ob.run(lambda: None)
    assert rows_in_file(path) == [(1, int(A), "sos")] and not list(tmp_path.glob("o.db.corrupt-*"))


async def test_a_locked_database_is_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with running(make(path)) as ob:
        await ob.send(A, "sos", {})
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError):
            await make(path).run(lambda: None)
    finally:
        holder.rollback()
        holder.close()
    assert not list(tmp_path.glob("o.db.corrupt-*")), "a busy file is not a corrupt file"
    assert rows_in_file(path) == [(1, int(A), "sos")]


async def test_rows_before_the_damage_are_salvaged_with_their_seq(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with running(make(path, commit_interval_s=0.001)) as ob:
        envs = await asyncio.gather(*[ob.send_nowait(A, "sos", {"i": i, "pad": "z" * 300}) for i in range(400)])
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[-3000:] = b"\xff" * 3000  # damage the last pages only
    path.write_bytes(bytes(data))
    async with running(make(path)) as ob:
        await asyncio.wait_for(ob.send(E, "after", {}), 5)  # commits after the outbox_reset event
        got = await drain_all(ob)
    assert ob.reset_reason is not None and "salvaged" in ob.reset_reason
    kept = [e for e in got if e.kind == "sos"]
    assert 0 < len(kept) < 400
    by_seq = {e.seq: e for e in envs}
    assert all(e.to_json() == by_seq[e.seq].to_json() for e in kept), "salvaged rows keep their id and content"
    reset = next(e for e in got if e.kind == "outbox_reset")
    assert reset.seq > max(by_seq), "new seqs start above every seq used before"
