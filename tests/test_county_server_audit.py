"""The audit log's hash chain: intact, an edited row, a deleted row (first, middle, last against a recorded
head), a re-hashed edit, concurrent appends; `village county audit check` as a process. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from county.server import audit
from county.store.db import Database
from county.store.tables import audit as audit_t

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    d = await Database.open(db_url)
    try:
        yield d
    finally:
        await d.close()


async def fill(db: Database, n: int = 5) -> None:
    for i in range(n):
        async with db.begin() as conn:
            await audit.append(conn, "li", "broadcast.create", f"cmd-{i}", {"to": ["group:town-menglou"], "i": i,
                                                                           "title": "山洪预警"}, ts=1000 + i)


async def sql(db: Database, stmt: object) -> None:
    async with db.begin() as conn:
        await conn.execute(stmt)  # type: ignore[call-overload]


async def test_an_intact_chain(db: Database) -> None:
    assert await audit.check(db) is None
    empty = await audit.verify(db)
    assert (empty.rows, empty.head_seq, empty.broken) == (0, None, None)
    await fill(db)
    report = await audit.verify(db)
    assert report.broken is None and report.rows == 5 and report.head_seq == 5
    async with db.connect() as conn:
        rows = (await conn.execute(select(audit_t).order_by(audit_t.c.seq))).mappings().all()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == audit.GENESIS and all(rows[i]["prev_hash"] == rows[i - 1]["hash"]
                                                         for i in range(1, 5))
    assert rows[0]["detail"] == '{"i":0,"title":"山洪预警","to":["group:town-menglou"]}'  # canonical JSON
    assert report.head_hash == rows[-1]["hash"]


async def test_an_edited_row_is_named(db: Database) -> None:
    await fill(db)
    await sql(db, update(audit_t).where(audit_t.c.seq == 3).values(actor="someone-else"))
    broken = await audit.check(db)
    assert broken is not None and broken.seq == 3 and "edited" in broken.problem


async def test_an_edit_with_a_recomputed_hash_breaks_the_next_row(db: Database) -> None:
    await fill(db)
    async with db.connect() as conn:
        r = (await conn.execute(select(audit_t).where(audit_t.c.seq == 2))).mappings().one()
    forged = audit.row_hash(r["prev_hash"], 2, r["ts"], r["actor"], "login", r["target"], r["detail"])
    await sql(db, update(audit_t).where(audit_t.c.seq == 2).values(action="login", hash=forged))
    broken = await audit.check(db)
    assert broken is not None and broken.seq == 3 and "does not chain to row seq=2" in broken.problem


@pytest.mark.parametrize(("deleted", "named", "problem"), [
    ([3], 4, "row 3 missing"), ([1], 2, "row 1 missing"), ([2, 3], 4, "rows 2..3 missing")])
async def test_a_deleted_row_is_detected(db: Database, deleted: list[int], named: int, problem: str) -> None:
    await fill(db)
    await sql(db, delete(audit_t).where(audit_t.c.seq.in_(deleted)))
    broken = await audit.check(db)
    assert broken is not None and broken.seq == named and problem in broken.problem


async def test_rows_deleted_at_the_end_are_found_against_a_recorded_head(db: Database) -> None:
    await fill(db)
    head = await audit.verify(db)
    assert head.head_seq == 5 and head.head_hash is not None
    await sql(db, delete(audit_t).where(audit_t.c.seq >= 4))
    assert await audit.check(db) is None  # without a head, a shorter chain is still a chain
    report = await audit.verify(db, (head.head_seq, head.head_hash))
    assert report.broken is not None and report.broken.seq == 5 and "deleted at the end" in report.broken.problem


async def test_concurrent_appends_chain_one_after_the_other(db_url: str) -> None:
    dbs = [await Database.open(db_url) for _ in range(3)]  # three "instances"
    try:
        async def writer(d: Database, who: str) -> None:
            for i in range(8):
                async with d.begin() as conn:
                    await audit.append(conn, who, "alarm.ack", f"a-{i}", {"i": i})

        await asyncio.gather(*(writer(d, f"w{k}") for k, d in enumerate(dbs)))
        report = await audit.verify(dbs[0])
        assert report.broken is None and report.rows == 24 and report.head_seq == 24
    finally:
        for d in dbs:
            await d.close()


async def test_an_action_and_its_audit_row_commit_together(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.begin() as conn:
            await audit.append(conn, "li", "alarm.ack", "a-1", {})
            raise RuntimeError("the action failed")
    assert (await audit.verify(db)).rows == 0


def audit_cli(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "county", "audit", "check", "-c", str(cfg), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


async def test_audit_check_command(db: Database, db_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "county.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\n', encoding="utf-8")
    await fill(db, 4)
    ok = audit_cli(cfg)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("audit log intact: 4 row(s), head 4:")
    head = ok.stdout.split("head ", 1)[1].strip()

    await sql(db, update(audit_t).where(audit_t.c.seq == 2).values(detail='{"i":99}'))
    bad = audit_cli(cfg)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "village county audit check: broken at row seq=2: its fields do not match its hash (the row was edited) "
        "(1 row(s) before it intact)"]

    in_chinese = audit_cli(cfg, "--lang", "zh")  # the same break, the same exit code, in words
    assert in_chinese.returncode == 1 and in_chinese.stderr.strip().splitlines() == [
        "village county audit check: 在 seq=2 这一行：内容和哈希对不上（这一行被改过） 处断裂（之前的 1 行完好）"], \
        in_chinese.stderr

    await sql(db, delete(audit_t).where(audit_t.c.seq == 2))
    gone = audit_cli(cfg)
    assert gone.returncode == 1 and "row seq=3: row 2 missing (deleted)" in gone.stderr
    assert "缺了第 2 行（被删了）" in audit_cli(cfg, "--lang", "zh").stderr

    await sql(db, delete(audit_t))
    await fill(db, 4)
    recorded = audit_cli(cfg)
    assert recorded.returncode == 0
    head = recorded.stdout.split("head ", 1)[1].strip()
    await sql(db, delete(audit_t).where(audit_t.c.seq == 4))
    assert audit_cli(cfg).returncode == 0  # a shorter chain is still a chain...
    tail = audit_cli(cfg, "--head", head)  # ...but not the one whose head was recorded
    assert tail.returncode == 1 and "row seq=4: the recorded head row is missing" in tail.stderr, tail.stderr
    assert audit_cli(cfg, "--head", "nonsense").returncode == 2
