"""The outbox when its own writes fail, on a real SQLite file: one bad row, a full disk under the seq
high-water mark, arbitrary text in `data`, and giving a drained backlog's space back to the disk."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agent.outbox
from agent.config import parse_config
from agent.fsutil import write_atomic
from agent.link import Link
from agent.outbox import Outbox, OutboxRefused, OutboxUnencodable
from agent.outbox_schema import MIGRATIONS
from agent.protocol.envelope import Envelope, MsgClass
from agent.service import InboundCommand
from agent.sqlite_store import open_sqlite_sync
from tests.support import Collector, Mosquitto, agent_config_dict, wait_until

A, R, E, T = MsgClass.ALARM, MsgClass.RECEIPT, MsgClass.EVENT, MsgClass.TELEMETRY
LONE = "\ud800"  # a lone surrogate: a str Python holds but UTF-8 cannot encode


def make(path: Path, **kw: Any) -> Outbox:
    opts: dict[str, Any] = {"max_bytes": 10**9, "telemetry_ttl_s": 3600.0, "commit_interval_s": 0.01}
    opts.update(kw)
    return Outbox(path, "box-1", **opts)


@contextlib.asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(outbox.run(lambda: None), name="outbox.run")
    await outbox.wait_open()
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def rows_in_file(path: Path) -> list[tuple[int, int, str, bytes]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT seq, cls, kind, body FROM outbox ORDER BY seq").fetchall()


def has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


def replaced(value: Any) -> Any:
    """`value` with every lone surrogate replaced by U+FFFD: what an encoder that replaces it stores."""
    if isinstance(value, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    if isinstance(value, dict):
        return {replaced(k): replaced(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replaced(v) for v in value]
    return value


def check_stored_or_refused(result: object, data: dict[str, Any], body: bytes | None) -> None:
    """A send of `data` either stored it (read back exactly, or with unencodable text replaced) or
    refused it with a clear OutboxUnencodable; text that UTF-8 can hold is never refused."""
    if isinstance(result, Envelope):
        assert body is not None, "send() returned but the row is not in the file"
        assert body == result.encode()
        stored = json.loads(body)["data"]
        assert stored == (replaced(data) if has_lone_surrogate(data) else data)
    else:
        assert isinstance(result, OutboxUnencodable), repr(result)
        assert "cannot be encoded" in str(result)
        assert has_lone_surrogate(data), f"encodable data refused: {result}"


# ---------------------------------------------------------------- one bad row in a commit


class _NoCommands:
    async def on_command(self, msg: InboundCommand) -> None:
        return None


async def test_a_row_that_cannot_be_encoded_fails_alone_and_the_alarm_beside_it_is_delivered(
        tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    """The issue's case: a refusal whose detail holds a lone surrogate, committed together with an alarm."""
    (tmp_path / "state").mkdir()
    config = parse_config(agent_config_dict(tmp_path / "state", broker.url))
    outbox = make(config.outbox_path)
    link = Link(config, outbox, _NoCommands())
    async with running(outbox) as task:
        link_task = asyncio.create_task(link.run(lambda: None), name="link.run")
        try:
            bad_data = {"detail": f'header {{"alg":"EdDSA","{LONE}":1}}'}
            # queued in the same turn: one batch, one commit
            bad = outbox.send_nowait(R, "refused", bad_data)
            alarm = outbox.send_nowait(A, "sos", {"wearer": "W1"})
            after = outbox.send_nowait(E, "after", {"i": 1})
            results = await asyncio.wait_for(asyncio.gather(bad, alarm, after, return_exceptions=True), 10)
            sos, later = results[1], results[2]
            assert isinstance(sos, Envelope) and isinstance(later, Envelope), results
            stored = {seq: body for seq, _c, _k, body in rows_in_file(config.outbox_path)}
            assert sos.seq in stored and later.seq in stored, "the alarm and the event are durable"
            check_stored_or_refused(results[0], bad_data,
                                    stored.get(results[0].seq) if isinstance(results[0], Envelope) else None)
            if not isinstance(results[0], Envelope):
                assert later.seq == sos.seq + 1, "a refused row takes no seq"
            await asyncio.to_thread(wait_until, lambda: any(
                e.get("kind") == "sos" and e.get("id") == sos.id for e in collector.envelopes()), 20)
            assert not task.done(), "the writer task survives"
            assert isinstance(await asyncio.wait_for(outbox.send(A, "sos", {"n": 2}), 10), Envelope)
        finally:  # the link stops before the outbox it reads
            link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link_task


@pytest.mark.parametrize("cls", [A, R, E, T])
async def test_an_envelope_whose_encode_raises_fails_only_its_own_send(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: MsgClass) -> None:
    """Whatever encode raises (the seam: an envelope the outbox cannot turn into bytes), only that caller
    gets it; the alarm and telemetry of the same commit are stored and the seq has no gap."""
    real = Envelope.encode

    def encode(env: Envelope) -> bytes:
        if env.kind == "poison":
            raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")
        return real(env)

    monkeypatch.setattr(Envelope, "encode", encode)
    path = tmp_path / "o.db"
    async with running(ob := make(path)) as task:
        poison = ob.send_nowait(cls, "poison", {"x": 1})
        alarm = ob.send_nowait(A, "sos", {"i": 1})
        tele = ob.send_nowait(T, "position", {"i": 2})
        got = await asyncio.wait_for(asyncio.gather(poison, alarm, tele, return_exceptions=True), 10)
        assert isinstance(got[0], OutboxUnencodable)
        assert "RecursionError" in str(got[0]) and "poison" in str(got[0])
        assert isinstance(got[1], Envelope) and isinstance(got[2], Envelope)
        assert got[2].seq == got[1].seq + 1
        assert [(s, k) for s, _c, k, _b in rows_in_file(path)] == [(got[1].seq, "sos"), (got[2].seq, "position")]
        assert ob.counters[f"unencodable.{cls.wire}"] == 1
        assert not task.done()
        assert isinstance(await asyncio.wait_for(ob.send(A, "sos", {"i": 3}), 10), Envelope)
    async with running(ob := make(path)):
        assert ob.counters[f"unencodable.{cls.wire}"] == 1, "the count is saved with the next commit"


@pytest.mark.parametrize(("field", "value"), [("ts_ms", 1 << 70), ("kind", 12345), ("kind", f"k{LONE}")])
async def test_a_field_sqlite_cannot_bind_fails_alone(tmp_path: Path, field: str, value: object) -> None:
    """ts and kind go into their own columns: a value SQLite cannot bind must not fail the INSERT of the
    whole batch (before, an OverflowError ended the writer and the alarm beside it waited forever)."""
    path = tmp_path / "o.db"
    async with running(ob := make(path)) as task:
        args: dict[str, Any] = {"ts_ms": None, "kind": "bad", field: value}
        bad = ob.send_nowait(E, args["kind"], {"x": 1}, ts_ms=args["ts_ms"])
        alarm = ob.send_nowait(A, "sos", {"i": 1})
        got = await asyncio.wait_for(asyncio.gather(bad, alarm, return_exceptions=True), 10)
        assert isinstance(got[0], OutboxUnencodable), got
        assert isinstance(got[1], Envelope)
        assert [k for _s, _c, k, _b in rows_in_file(path)] == ["sos"]
        assert not task.done()


# ---------------------------------------------------------------- a full disk under the seq file


async def test_a_full_disk_while_writing_the_seq_high_water_mark_settles_every_send(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the seq file's write (the fsutil seam): before, the OSError ended the writer task and
    the alarm's send() never returned. Now it is the disk-full case: telemetry and events refused, alarms
    held and retried, the writer alive, later sends stored."""
    fail = {"left": 3, "calls": 0}

    def write_full(path: Path, data: bytes, **kw: Any) -> None:
        fail["calls"] += 1
        if fail["left"] > 0:
            fail["left"] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_atomic(path, data, **kw)

    monkeypatch.setattr(agent.outbox, "write_atomic", write_full)
    monkeypatch.setattr(agent.outbox, "DISK_RETRY_S", 0.05)
    path = tmp_path / "o.db"
    async with running(ob := make(path)) as task:
        tele = ob.send_nowait(T, "position", {"i": 0})
        event = ob.send_nowait(E, "e", {"i": 1})
        alarm = ob.send_nowait(A, "sos", {"i": 2})
        receipt = ob.send_nowait(R, "done", {"i": 3})
        got = await asyncio.wait_for(asyncio.gather(tele, event, alarm, receipt, return_exceptions=True), 20)
        assert isinstance(got[0], OutboxRefused) and isinstance(got[1], OutboxRefused), got
        assert "full" in str(got[0])
        assert isinstance(got[2], Envelope) and isinstance(got[3], Envelope), got
        assert fail["left"] == 0 and fail["calls"] >= 4, "retried after the disk had room again"
        assert [(s, k) for s, _c, k, _b in rows_in_file(path)] == [(got[2].seq, "sos"), (got[3].seq, "done")]
        hwm = int((tmp_path / "o.db.seq").read_text())
        assert hwm > got[3].seq, "the reservation is on disk before any seq above the old one is used"
        assert ob.counters["refused.telemetry"] == 1 and ob.counters["refused.event"] == 1
        assert not task.done(), "the writer task survives"
        later = await asyncio.wait_for(asyncio.gather(*[ob.send(c, "later", {}) for c in (A, T)]), 10)
        assert [e.seq for e in later] == [got[3].seq + 1, got[3].seq + 2]


async def test_a_seq_file_that_stays_unwritable_holds_alarms_but_answers_everything_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO (not a full disk) on every write of the seq file: telemetry is refused at once, the alarm
    waits (it is never reported stored before it is) and is stored as soon as the file can be written."""
    broken = asyncio.Event()
    broken.set()

    def write_eio(path: Path, data: bytes, **kw: Any) -> None:
        if broken.is_set():
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        write_atomic(path, data, **kw)

    monkeypatch.setattr(agent.outbox, "write_atomic", write_eio)
    monkeypatch.setattr(agent.outbox, "DISK_RETRY_S", 0.05)
    path = tmp_path / "o.db"
    async with running(ob := make(path)) as task:
        tele = ob.send_nowait(T, "position", {})
        alarm = ob.send_nowait(A, "sos", {})
        with pytest.raises(OutboxRefused, match=r"EIO|Input/output"):
            await asyncio.wait_for(tele, 10)
        assert not alarm.done() and not task.done()
        assert rows_in_file(path) == []
        broken.clear()
        env = await asyncio.wait_for(alarm, 10)
        assert [s for s, *_ in rows_in_file(path)] == [env.seq]


# ---------------------------------------------------------------- arbitrary text through the real outbox

SPECIALS = st.sampled_from(["\ud800", "\udfff", "\udc80", "\ud83d", "\x00", "\n", "\r", "\x1b", "\u2028",
                            "\ufeff", '"', "\\", "\U0001f600", "救", "\x7f", "\u0085"])
ANY_CHAR = st.characters(exclude_categories=())  # surrogates and control characters included
TEXT = st.text(st.one_of(ANY_CHAR, SPECIALS), max_size=60)
HUGE = st.builds(lambda unit: (unit * (100_000 // len(unit) + 1))[:100_000],
                 st.text(st.one_of(ANY_CHAR, SPECIALS), min_size=1, max_size=8))
VALUES = st.one_of(TEXT, HUGE, st.lists(TEXT, max_size=3), st.dictionaries(TEXT, TEXT, max_size=2))
DATA = st.dictionaries(TEXT, VALUES, max_size=4)


def test_any_text_in_data_is_stored_exactly_or_refused_alone(tmp_path: Path) -> None:
    """Hypothesis over `data` (surrogates, control characters, 100k characters) through one real outbox:
    each send is durable and reads back as sent (unencodable text replaced) or fails with a clear
    OutboxUnencodable; the alarm and the telemetry committed beside it are always stored."""
    loop = asyncio.new_event_loop()
    ob = make(tmp_path / "o.db")
    task = loop.run_until_complete(_start(ob))
    examples = 0

    async def one(data: dict[str, Any]) -> None:
        nonlocal examples
        examples += 1
        futures = [ob.send_nowait(A, "sos", {"n": examples}), ob.send_nowait(E, "free", data),
                   ob.send_nowait(T, "position", {"n": examples})]
        alarm, result, tele = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
        assert isinstance(alarm, Envelope) and isinstance(tele, Envelope), (alarm, tele)
        rows = {r.seq: r.body for r in await ob.next_batch(10)}
        assert set(rows) >= {alarm.seq, tele.seq}
        check_stored_or_refused(result, data, rows.get(result.seq) if isinstance(result, Envelope) else None)
        for seq in rows:
            ob.ack(seq)
        assert not task.done(), "the writer task survives"

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(DATA)
    def check(data: dict[str, Any]) -> None:
        loop.run_until_complete(one(data))

    try:
        check()
        # the last acks are committed, and the writer still answers
        env = loop.run_until_complete(asyncio.wait_for(ob.send(A, "last", {}), 10))
        assert [(s, k) for s, _c, k, _b in rows_in_file(tmp_path / "o.db")] == [(env.seq, "last")]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.close()


async def _start(ob: Outbox) -> asyncio.Task[None]:
    task = asyncio.create_task(ob.run(lambda: None), name="outbox.run")
    await ob.wait_open()
    return task


# ---------------------------------------------------------------- giving a drained backlog's space back


def file_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


async def fill_and_drain(ob: Outbox, rows: int) -> tuple[int, int]:
    """Queue `rows` telemetry rows of ~2 KB, then ack them all; returns the file size full and drained."""
    pad = "x" * 2000
    for start in range(0, rows, 1000):
        await asyncio.gather(*[ob.send_nowait(T, "position", {"i": i, "pad": pad})
                               for i in range(start, min(rows, start + 1000))])
    full = file_bytes(ob.path)
    ob.reclaimed.clear()
    while batch := await ob.next_batch(1000):
        for row in batch:
            if row.cls is T:
                ob.ack(row.seq)
    await asyncio.wait_for(ob.reclaimed.wait(), 60)
    await ob.send(A, "after", {})  # the next write starts the WAL over, cut to its size limit
    return full, file_bytes(ob.path)


async def test_the_file_shrinks_after_a_backlog_is_drained(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with running(ob := make(path)):
        full, drained = await fill_and_drain(ob, 8000)
        assert full > 16 << 20, full
        assert drained < full // 3, (full, drained)
        assert os.path.getsize(path) < 2 << 20, "the database file itself is cut back"
        assert sum(ob.depth().values()) == 1
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
        assert db.execute("PRAGMA freelist_count").fetchone()[0] < agent.outbox.RECLAIM_STEP_PAGES
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_file_from_an_older_agent_is_converted_when_drained_and_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    open_sqlite_sync(path, migrations=MIGRATIONS).close()  # what an older agent made: auto_vacuum off
    async with running(ob := make(path)):
        await ob.send(A, "old", {})
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA auto_vacuum").fetchone() == (0,)
        full, drained = await fill_and_drain(ob, 8000)
        assert drained < full // 3, (full, drained)
        ob.rewind()
        left = await ob.next_batch(10)
        assert [Envelope.decode(r.body).kind for r in left] == ["old", "after"], "live rows survive the VACUUM"
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
