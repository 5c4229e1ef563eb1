"""county.store on a real SQLite file and a real PostgreSQL (tests/pgcluster.py): migrations, the two
dialect-aware inserts, retention."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, Column, Connection, MetaData, column, func, inspect, select, table

from county.store import Database, DatabaseUnavailable, DatabaseUrlError, SchemaError, retention
from county.store import migrations as store_migrations
from county.store.db import async_url
from county.store.queries import seq_gaps
from county.store.tables import alarms, boxes, messages, metadata, positions, quarantine, receipts
from tests.pgcluster import PgCluster

REPO = Path(__file__).resolve().parent.parent
alembic_version = table("alembic_version", column("version_num"))


def _schema_diff(sync_conn: Connection, target: MetaData = metadata) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(sync_conn), target))


def _message(n: int, box: str = "b1", cls: str = "telemetry", received: int = 1_000) -> dict[str, object]:
    return {"id": f"{box}:{n}", "box": box, "seq": n, "ts": received, "class": cls, "kind": "heartbeat",
            "received": received, "raw": f'{{"seq":{n}}}'}


async def test_migrations_from_empty_create_exactly_the_tables_py_schema(db_url: str) -> None:
    """The guard that a column is not added to tables.py without a migration (alembic check, in a test)."""
    db = await Database.open(db_url, migrate=False)
    try:
        assert await db.revision() is None
        assert await db.migrate() == store_migrations.head()
        async with db.connect() as conn:
            names = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert names == set(metadata.tables) | {"alembic_version"}
            diff = await conn.run_sync(_schema_diff)
        assert diff == [], f"tables.py and the migrated schema differ (write a migration): {diff}"
    finally:
        await db.close()


async def test_instances_starting_together_migrate_once(db_url: str) -> None:
    """Two servers opening one new database at the same moment: one migrates, the other waits for it."""
    dbs = await asyncio.gather(*(Database.open(db_url) for _ in range(3)))
    try:
        assert [await db.revision() for db in dbs] == [store_migrations.head()] * 3
    finally:
        for db in dbs:
            await db.close()


_OPEN_ON_GO = """
import asyncio, sys
from county.store import Database
async def main():
    print("ready", flush=True)
    sys.stdin.readline()                      # every process has imported everything: go together
    db = await Database.open(sys.argv[1])
    print(await db.revision())
    await db.close()
asyncio.run(main())
"""


async def test_server_processes_starting_together_migrate_once(db_url: str) -> None:
    """Separate processes (instances of the server) on one new database: PostgreSQL's advisory lock,
    SQLite's BEGIN IMMEDIATE make the later ones wait for the first migration instead of failing."""
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", _OPEN_ON_GO, db_url, cwd=REPO,
                                                  stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                  stderr=asyncio.subprocess.PIPE) for _ in range(3)]
    for p in procs:
        assert p.stdout is not None
        assert await asyncio.wait_for(p.stdout.readline(), timeout=60) == b"ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout=90)
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode(errors="replace")[-2000:]
        assert out.decode().strip() == store_migrations.head()


async def test_schema_guard_sees_a_column_without_a_migration(db_url: str) -> None:
    """The check above can fail: a column only in the metadata is reported."""
    changed = MetaData()
    for t in metadata.tables.values():
        t.to_metadata(changed)
    changed.tables["boxes"].append_column(Column("new_thing", BigInteger))
    async with await Database.open(db_url) as db, db.connect() as conn:
        diff = await conn.run_sync(lambda c: _schema_diff(c, changed))
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "boxes", "new_thing")]


async def test_reopen_is_a_no_op_and_keeps_the_rows(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alembic")
    async with await Database.open(db_url) as db, db.begin() as conn:
        await conn.execute(db.insert_ignore(messages), [_message(1)])
    ran = [r.getMessage() for r in caplog.records if "Running upgrade" in r.getMessage()]
    assert ran and "0001" in ran[0]
    caplog.clear()
    async with await Database.open(db_url) as db:
        assert await db.revision() == store_migrations.head()
        async with db.connect() as conn:
            assert (await conn.execute(select(messages.c.id))).scalars().all() == ["b1:1"]
    assert not [r for r in caplog.records if "Running upgrade" in r.getMessage()]


async def test_insert_ignore_keeps_the_first_copy_and_returns_only_new_rows(db_url: str) -> None:
    async with await Database.open(db_url) as db:
        async with db.begin() as conn:
            await conn.execute(db.insert_ignore(messages), [_message(n) for n in (1, 2, 3)])
        resend = [{**_message(n), "raw": "resent"} for n in (2, 3, 4)]
        async with db.begin() as conn:
            got = await conn.execute(db.insert_ignore(messages).returning(messages.c.id), resend)
            assert sorted(got.scalars().all()) == ["b1:4"]
        async with db.connect() as conn:
            rows = dict((await conn.execute(select(messages.c.id, messages.c.raw))).all())
        assert rows == {"b1:1": '{"seq":1}', "b1:2": '{"seq":2}', "b1:3": '{"seq":3}', "b1:4": "resent"}


async def test_upsert_updates_only_when_asked(db_url: str) -> None:
    def receipt(state: str, ts: int) -> dict[str, object]:
        return {"cmd": "c1", "box": "b1", "state": state, "reason": None, "ts": ts, "envelope": f"b1:{ts}"}

    async with await Database.open(db_url) as db:
        newest = db.upsert(receipts, ["cmd", "box"], ["state", "ts", "envelope"],
                           where=lambda ex: ex.ts > receipts.c.ts)
        async with db.begin() as conn:
            await conn.execute(newest, [receipt("received", 10)])
            await conn.execute(newest, [receipt("played", 20)])
            await conn.execute(newest, [receipt("received", 15)])   # older, arrived late: kept out
        async with db.connect() as conn:
            row = (await conn.execute(select(receipts.c.state, receipts.c.ts))).one()
        assert tuple(row) == ("played", 20)

        alarm = {"id": "b1:7", "box": "b1", "kind": "sos", "ts": 1, "received": 2, "data": {"k": 1}}
        bump = db.upsert(alarms, ["id"], lambda ex: {"escalations": alarms.c.escalations + 1,
                                                     "escalated_at": ex.received})
        async with db.begin() as conn:
            for received in (2, 30, 40):
                await conn.execute(bump, [{**alarm, "received": received}])
        async with db.connect() as conn:
            bumped = (await conn.execute(select(alarms.c.escalations, alarms.c.escalated_at, alarms.c.data))).one()
        assert tuple(bumped) == (2, 40, {"k": 1})
        with pytest.raises(ValueError, match="at least one column"):
            db.upsert(alarms, ["id"], [])


async def test_write_rows_stores_any_text_nulls_and_big_ints_and_returns_only_new_rows(db_url: str) -> None:
    """Database.write_rows: executemany on SQLite, one INSERT ... SELECT FROM unnest(binary arrays) on
    PostgreSQL; the same rows and answers on both, whatever the text (quotes, backslashes, braces, commas,
    CJK, an empty string) and with NULLs; a rollback takes its rows back (the same transaction)."""
    from county.store.db import upsert_on
    from county.store.tables import positions_latest

    odd = ['{"a": "b\\"}', 'NULL', '', '勐海 "村" \\N', '{1,2}', "x" * 70_000, "tab\tnew\nline"]
    cols = ("id", "box", "seq", "ts", "class", "kind", "received", "raw")
    rows: list[dict[str, Any]] = [
        {"id": f"b1:{i}", "box": "b1", "seq": (1 << 62) + i, "ts": i, "class": "event", "kind": "k", "received": 1,
         "raw": raw} for i, raw in enumerate(odd)]

    def ignore(ins: Any) -> Any:
        return ins.on_conflict_do_nothing().returning(messages.c.id)

    async with await Database.open(db_url) as db:
        async with db.begin() as conn:
            got = await db.write_rows(conn, "t.messages", messages, cols, rows, ignore, returning=True)
        assert sorted(r[0] for r in got) == sorted(r["id"] for r in rows)
        async with db.begin() as conn:  # a resend with one new row: only that one comes back
            again = [*rows[:3], {**rows[0], "id": "b1:99"}]
            assert [r[0] for r in await db.write_rows(conn, "t.messages", messages, cols, again, ignore,
                                                      returning=True)] == ["b1:99"]
        async with db.begin() as conn:  # insert_new: the same answer on both (SQLite reads under its write lock)
            fresh = [{**rows[1], "id": f"b1:{n}"} for n in (200, 201)]
            assert await db.insert_new(conn, "t.new", messages, cols, "id", [rows[2], *fresh]) == {"b1:200", "b1:201"}
            assert await db.insert_new(conn, "t.new", messages, cols, "id", fresh) == set()
        with pytest.raises(RuntimeError):
            async with db.begin() as conn:
                await db.insert_new(conn, "t.new", messages, cols, "id", [{**rows[0], "id": "b1:100"}])
                raise RuntimeError("roll back")
        async with db.connect() as conn:
            stored = dict((await conn.execute(select(messages.c.id, messages.c.raw))).all())
            seqs = {r[0]: r[1] for r in (await conn.execute(select(messages.c.id, messages.c.seq))).all()}
        assert {k: stored[k] for k in (r["id"] for r in rows)} == {r["id"]: r["raw"] for r in rows}
        assert "b1:100" not in stored and seqs["b1:6"] == (1 << 62) + 6

        lcols = ("box", "wearer", "device", "lat", "lon", "acc_m", "fix_ts", "ts")

        def newest(ins: Any) -> Any:
            return upsert_on(ins, ["box", "wearer"], ["device", "lat", "lon", "acc_m", "fix_ts", "ts"],
                             where=lambda ex: positions_latest.c.ts < ex.ts)

        first: list[dict[str, Any]] = [
            {"box": "b1", "wearer": "w1", "device": None, "lat": 21.5, "lon": 100.25, "acc_m": None, "fix_ts": None,
             "ts": 10},
                 {"box": "b1", "wearer": "w2", "device": "d", "lat": -1.0, "lon": 2.0, "acc_m": 3.5, "fix_ts": 9,
                  "ts": 10}]
        later = [{**first[0], "lat": 22.0, "ts": 20}, {**first[1], "lat": 5.0, "ts": 5}]  # w2's is older: kept out
        for batch in (first, later):
            async with db.begin() as conn:
                await db.write_rows(conn, "t.latest", positions_latest, lcols, batch, newest)
        async with db.connect() as conn:
            got_rows = {r[0]: tuple(r[1:]) for r in (await conn.execute(
                select(positions_latest.c.wearer, positions_latest.c.lat, positions_latest.c.acc_m,
                       positions_latest.c.device, positions_latest.c.ts))).all()}
        assert got_rows == {"w1": (22.0, None, None, 20), "w2": (-1.0, 3.5, "d", 10)}
        async with db.begin() as conn:
            assert await db.write_rows(conn, "t.latest", positions_latest, lcols, [], newest) == []


async def test_a_database_from_a_newer_version_is_refused_not_migrated_down(db_url: str) -> None:
    async with await Database.open(db_url) as db, db.begin() as conn:
        await conn.execute(db.insert_ignore(messages), [_message(1)])
        await conn.execute(alembic_version.update().values(version_num="0042_from_the_future"))
    with pytest.raises(SchemaError, match=r"0042_from_the_future.*newer version.*not migrated down"):
        await Database.open(db_url)
    async with await Database.open(db_url, migrate=False) as db:
        assert await db.revision() == "0042_from_the_future"
        async with db.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(messages))).scalar_one() == 1


async def test_upgrade_from_the_previous_revision_keeps_the_rows(db_url: str) -> None:
    db = await Database.open(db_url, migrate=False)
    try:
        async with db.begin() as conn:
            await conn.run_sync(store_migrations.upgrade_to_head, "0001")
            await conn.execute(boxes.insert().values(id="b1", first_seen=5))
    finally:
        await db.close()
    async with await Database.open(db_url) as db, db.connect() as conn:
        assert await db.revision() == store_migrations.head() != "0001"
        row = (await conn.execute(select(boxes.c.id, boxes.c.first_seen, boxes.c.purged))).one()
        assert tuple(row) == ("b1", 5, 0)
        assert await conn.run_sync(_schema_diff) == []


async def test_upgrade_from_0002_backfills_the_seq_counters_from_the_stored_messages(db_url: str) -> None:
    db = await Database.open(db_url, migrate=False)
    try:
        async with db.begin() as conn:
            await conn.run_sync(store_migrations.upgrade_to_head, "0002")
            # b3: a state message only, no envelope
            await conn.execute(boxes.insert(), [{"id": "b1", "first_seen": 5, "last_seq": 20, "purged": 3},
                                                {"id": "b2", "first_seen": 5, "last_seq": 8, "purged": 0},
                                                {"id": "b3", "first_seen": 5, "last_seq": None, "purged": 0}])
            await conn.execute(messages.insert(), [_message(n, "b1") for n in (10, 11, 12, 15, 20)]
                               + [_message(n, "b2") for n in (7, 8)])
    finally:
        await db.close()
    async with await Database.open(db_url) as db, db.connect() as conn:
        assert await db.revision() == store_migrations.head()
        rows = (await conn.execute(select(boxes.c.id, boxes.c.stored, boxes.c.min_seq).order_by(boxes.c.id)))
        assert [tuple(r) for r in rows.all()] == [("b1", 8, 10), ("b2", 2, 7), ("b3", 0, None)]
        gaps = {g.box: g for g in await seq_gaps(conn)}
        assert set(gaps) == {"b1", "b2"}
        # b1: 10..20 is 11 seqs; 5 stored, 3 purged (counted in `stored` ever), 3 missing
        assert (gaps["b1"].stored, gaps["b1"].purged, gaps["b1"].missing) == (5, 3, 3)
        assert (gaps["b2"].stored, gaps["b2"].missing) == (2, 0)


NOW = 400 * retention.DAY_MS


async def _fill_for_retention(db: Database) -> None:
    old, new = NOW - 91 * retention.DAY_MS, NOW - 89 * retention.DAY_MS
    async with db.begin() as conn:
        await conn.execute(boxes.insert(), [{"id": b, "first_seen": 0} for b in ("b1", "b2")])
        # 12,000 old telemetry envelopes (7,000 of b1, 5,000 of b2), and what must stay
        await conn.execute(messages.insert(), [_message(n, "b1" if n < 7000 else "b2", "telemetry", old)
                                               for n in range(12_000)])
        await conn.execute(messages.insert(), [_message(100_000 + n, "b1", "telemetry", new) for n in range(10)])
        await conn.execute(messages.insert(), [_message(200_000 + i, "b1", cls, old)
                                               for i, cls in enumerate(("alarm", "event", "receipt"))])
        await conn.execute(alarms.insert().values(id="b1:200000", box="b1", kind="sos", ts=old, received=old,
                                                  data={}))
        await conn.execute(receipts.insert().values(cmd="c1", box="b1", state="played", ts=old,
                                                    envelope="b1:200002"))
        await conn.execute(positions.insert(), [{"box": "b1", "wearer": "w1", "lat": 1.0, "lon": 2.0, "ts": ts}
                                                for ts in [old] * 6 + [new] * 2])
        await conn.execute(quarantine.insert(), [{"received": r, "topic": "t", "reason": "bad json", "size": 1,
                                                  "raw": b"x"} for r in (old, new)])


async def _counts(db: Database) -> dict[str, int]:
    async with db.connect() as conn:
        out = {}
        for t in (messages, alarms, receipts, positions, quarantine):
            out[t.name] = (await conn.execute(select(func.count()).select_from(t))).scalar_one()
        by_class = (await conn.execute(select(messages.c["class"], func.count()).group_by(messages.c["class"])))
        out.update({f"messages.{c}": n for c, n in by_class.all()})
        out.update({f"purged.{b}": n for b, n in (await conn.execute(select(boxes.c.id, boxes.c.purged))).all()})
        return out


async def test_retention_deletes_old_telemetry_in_batches_and_keeps_alarms_receipts_events(db_url: str) -> None:
    async with await Database.open(db_url) as db:
        await _fill_for_retention(db)
        result = await retention.purge(db, now_ms=NOW, telemetry_days=90, quarantine_days=90, batch_rows=5000)
        assert (result.messages, result.positions, result.quarantine) == (12_000, 6, 1)
        assert result.batches == (5000, 5000, 2000, 6, 1)   # each one transaction of at most 5,000 rows
        assert await _counts(db) == {
            "messages": 13, "messages.telemetry": 10, "messages.alarm": 1, "messages.event": 1,
            "messages.receipt": 1, "alarms": 1, "receipts": 1, "positions": 2, "quarantine": 1,
            "purged.b1": 7000, "purged.b2": 5000}
        again = await retention.purge(db, now_ms=NOW, batch_rows=5000)
        assert again.total == 0 and again.batches == ()


async def test_retention_loop_purges_at_start_and_stops_when_told(db_url: str) -> None:
    async with await Database.open(db_url) as db:
        await _fill_for_retention(db)
        stop, passes = asyncio.Event(), []

        def on_pass(p: retention.Purged) -> None:
            passes.append(p)
            stop.set()

        task = asyncio.create_task(retention.run(db, stop, every_s=3600, now_ms=lambda: NOW, batch_rows=4000,
                                                 on_pass=on_pass))
        await asyncio.wait_for(task, timeout=60)
        assert [p.batches for p in passes] == [(4000, 4000, 4000, 6, 1)]


async def test_retention_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="batch_rows"):
        await retention.purge(None, batch_rows=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        await retention.purge(None, telemetry_days=0)  # type: ignore[arg-type]


async def test_sqlite_is_set_up_for_a_server(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "county.db"   # the parent directory is created
    async with await Database.open(f"sqlite:///{path}") as db:
        async with db.connect() as conn:
            pragmas = {p: (await conn.exec_driver_sql(f"PRAGMA {p}")).scalar_one()
                       for p in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")}
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 10_000, "synchronous": 1}

        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            # a write transaction holds the write lock from its start (BEGIN IMMEDIATE): no late SQLITE_BUSY
            async with db.begin() as conn:
                await conn.execute(select(1))
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            # a read does not block writers
            async with db.connect() as conn:
                await conn.execute(select(messages.c.id))
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
        finally:
            other.close()


async def test_postgresql_unix_socket_url_form(pg_cluster: PgCluster) -> None:
    pg_cluster.create_database("socket_form")
    try:
        async with await Database.open(pg_cluster.socket_url("socket_form")) as db:
            assert db.dialect == "postgresql"
            assert await db.revision() == store_migrations.head()
    finally:
        pg_cluster.drop_database("socket_form")


async def test_a_sqlite_file_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DatabaseUnavailable, match=r"cannot open sqlite\+aiosqlite:///.*a-file/county.db: cannot "
                                                  r"create its directory"):
        await Database.open(f"sqlite:///{tmp_path}/a-file/county.db")


async def test_a_postgresql_that_cannot_be_opened_is_one_clear_error(pg_cluster: PgCluster) -> None:
    no_such = pg_cluster.url("no_such_db").replace("county@", "county:s3cret@")
    for migrate in (True, False):
        with pytest.raises(DatabaseUnavailable, match=r"cannot open postgresql\+psycopg://county:\*\*\*@.*"
                                                      r"no_such_db.*does not exist") as e:
            await Database.open(no_such, migrate=migrate)
        assert "s3cret" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("url", "driver", "database"), [
    ("sqlite:////var/lib/village-county/county.db", "sqlite+aiosqlite", "/var/lib/village-county/county.db"),
    ("sqlite:///county.db", "sqlite+aiosqlite", "county.db"),
    ("postgresql://county:pw@db.example:5433/county", "postgresql+psycopg", "county"),
    ("postgres://county@db/county", "postgresql+psycopg", "county"),
    ("postgresql:///county?host=/run/postgresql", "postgresql+psycopg", "county"),
    ("postgresql+psycopg://u@h/d", "postgresql+psycopg", "d"),
])
def test_url_forms(url: str, driver: str, database: str) -> None:
    u = async_url(url)
    assert (u.drivername, u.database) == (driver, database)


@pytest.mark.parametrize(("url", "why"), [
    ("mysql://u@h/d", "unsupported database"),
    ("sqlite://", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("postgresql+asyncpg://u@h/d", "only postgresql"),
    ("not a url", "not a database URL"),
])
def test_bad_urls_are_refused_clearly(url: str, why: str) -> None:
    with pytest.raises(DatabaseUrlError, match=why):
        async_url(url)
