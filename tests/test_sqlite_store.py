"""agent.sqlite_store and agent.fsutil on real files: damage is moved aside with its WAL, a busy file is not."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.fsutil import write_atomic
from agent.sqlite_store import (
    Corrupt,
    SchemaTooNew,
    auto_vacuum_mode,
    is_corruption,
    move_aside,
    open_sqlite,
    open_sqlite_sync,
)

V1 = "CREATE TABLE t (x INTEGER);"
V2 = "ALTER TABLE t ADD COLUMN y TEXT;"


def _with_uncheckpointed_wal(path: Path, sql: str = "INSERT INTO t VALUES (1)", schema: Sequence[str] = (V1,)) -> None:
    """A database whose last commit lives only in its -wal (the owner died before a checkpoint)."""
    db = open_sqlite_sync(path, migrations=schema)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute(sql)
    # keep the -wal: copy the files while this connection is still open (closing would checkpoint)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}.keep").write_bytes(Path(f"{path}{suffix}").read_bytes())
    db.close()
    for suffix in ("-wal", "-shm"):
        os.replace(f"{path}{suffix}.keep", f"{path}{suffix}")


def test_migrations_run_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_sqlite_sync(path, migrations=[V1]).close()
    db = open_sqlite_sync(path, migrations=[V1, V2])
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    assert [r[1] for r in db.execute("PRAGMA table_info(t)")] == ["x", "y"]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    db.close()


@pytest.mark.parametrize("sync", [True, False])
async def test_a_new_file_gets_auto_vacuum_an_existing_one_keeps_its_mode(tmp_path: Path, sync: bool) -> None:
    """auto_vacuum must be set before WAL mode writes page 1, or SQLite silently ignores it."""
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    open_sqlite_sync(old, migrations=[V1]).close()  # made without it: NONE
    for path in (new, old):
        if sync:
            open_sqlite_sync(path, migrations=[V1], auto_vacuum="INCREMENTAL").close()
        else:
            await (await open_sqlite(path, migrations=[V1], auto_vacuum="incremental")).close()
    modes = {}
    for path in (new, old):
        with sqlite3.connect(path) as db:
            modes[path.name] = db.execute("PRAGMA auto_vacuum").fetchone()[0]
    assert modes == {"new.db": 2, "old.db": 0}, "an existing file is converted only by the store's own VACUUM"
    adb = await open_sqlite(new, migrations=[V1])
    try:
        assert await auto_vacuum_mode(adb) == "INCREMENTAL"
    finally:
        await adb.close()
    with pytest.raises(ValueError, match="auto_vacuum"):
        open_sqlite_sync(tmp_path / "x.db", migrations=[V1], auto_vacuum="sometimes")
    assert not (tmp_path / "x.db").exists()


def test_a_failing_migration_leaves_the_old_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_sqlite_sync(path, migrations=[V1]).close()
    with pytest.raises(sqlite3.OperationalError):
        open_sqlite_sync(path, migrations=[V1, "CREATE TABLE u (a); THIS IS NOT SQL;"])
    db = open_sqlite_sync(path, migrations=[V1])
    assert db.execute("PRAGMA user_version").fetchone() == (1,)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchone() is None
    db.close()


def test_a_newer_schema_raises_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_sqlite_sync(path, migrations=[V1, V2]).close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match="v2 is newer than this agent's v1") as info:
        open_sqlite_sync(path, migrations=[V1])
    assert (info.value.found, info.value.supported) == (2, 1)
    assert not is_corruption(info.value)
    assert path.read_bytes() == before


async def test_async_twin_checks_the_same(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = await open_sqlite(path, migrations=[V1, V2], max_file_bytes=64 * 1024)
    assert await (await db.execute("PRAGMA user_version")).fetchone() == (2,)
    assert await (await db.execute("PRAGMA synchronous")).fetchone() == (2,)
    (pages,) = await (await db.execute("PRAGMA max_page_count")).fetchone()  # type: ignore[misc]
    (size,) = await (await db.execute("PRAGMA page_size")).fetchone()  # type: ignore[misc]
    assert pages * size == 64 * 1024
    await db.close()
    with pytest.raises(SchemaTooNew):
        await open_sqlite(path, migrations=[V1])


@pytest.mark.parametrize("sync", [True, False])
async def test_garbage_is_corruption(tmp_path: Path, sync: bool) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"not a database" * 200)
    with pytest.raises(sqlite3.DatabaseError) as info:
        if sync:
            open_sqlite_sync(path, migrations=[V1])
        else:
            await open_sqlite(path, migrations=[V1])
    assert is_corruption(info.value)


def test_damaged_pages_fail_quick_check(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = open_sqlite_sync(path, migrations=["CREATE TABLE t (x TEXT); CREATE INDEX t_x ON t (x);"])
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?)", [(f"row {i} " * 20,) for i in range(2000)])
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    data[-8192:] = b"\xff" * 8192
    path.write_bytes(bytes(data))
    with pytest.raises(sqlite3.DatabaseError) as info:
        open_sqlite_sync(path, migrations=["CREATE TABLE t (x TEXT); CREATE INDEX t_x ON t (x);"])
    assert is_corruption(info.value)
    assert is_corruption(Corrupt("quick_check: x"))


def test_a_damaged_file_keeps_its_wal_through_the_check(tmp_path: Path) -> None:
    schema = ["CREATE TABLE t (x TEXT); CREATE INDEX t_x ON t (x);"]
    path = tmp_path / "s.db"
    db = open_sqlite_sync(path, migrations=schema)
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?)", [(f"row {i} " * 20,) for i in range(2000)])
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    _with_uncheckpointed_wal(path, "INSERT INTO t VALUES ('late')", schema)
    wal = Path(f"{path}-wal").read_bytes()
    data = bytearray(path.read_bytes())
    data[-8192:] = b"\xff" * 8192
    path.write_bytes(bytes(data))
    with pytest.raises(Corrupt):
        open_sqlite_sync(path, migrations=schema)
    assert Path(f"{path}-wal").read_bytes() == wal, "closing the checking connection must not eat the WAL"
    moved = move_aside(path)
    assert Path(f"{moved}-wal").read_bytes() == wal and not Path(f"{path}-wal.keep").exists()


def test_a_locked_file_is_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_sqlite_sync(path, migrations=[V1]).close()
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            open_sqlite_sync(path, migrations=[V1])
        assert not is_corruption(info.value)
    finally:
        holder.rollback()
        holder.close()


def test_move_aside_keeps_the_wal_and_its_commits(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _with_uncheckpointed_wal(path)
    assert Path(f"{path}-wal").stat().st_size > 0
    moved = move_aside(path)
    assert moved.name.startswith("s.db.corrupt-") and moved.exists()
    assert Path(f"{moved}-wal").exists() and Path(f"{moved}-shm").exists()
    assert not path.exists() and not Path(f"{path}-wal").exists()
    # the evidence is whole: the commit that only lived in the -wal is still readable
    with sqlite3.connect(moved) as db:
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_move_aside_names_are_unique_and_tagged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    names = set()
    for _ in range(3):
        path.write_bytes(b"x")
        names.add(move_aside(path, "broken").name)
    assert len(names) == 3 and all(n.startswith("s.db.broken-") for n in names)
    assert move_aside(tmp_path / "absent.db").name.startswith("absent.db.corrupt-")  # nothing there: no error


def test_write_atomic_replaces_with_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"old")
    write_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, b"status", durable=False)
    assert path.read_bytes() == b"status"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()  # a directory where a file should go: the rename fails
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert target.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing" / "f", b"data")


# ------------------------------------------------------------------ each store's policy on a busy file

def _hold_exclusive(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    return holder


async def test_stores_never_move_a_locked_file_aside(tmp_path: Path) -> None:
    from agent.broadcast.store import BroadcastStore
    from agent.replay import ReplayStore, ReplayStoreError
    from agent.wearables.store import StoreError, WearablesStore

    paths = {name: tmp_path / name for name in ("commands.db", "broadcast.db", "wearables.db")}
    replay = ReplayStore(paths["commands.db"])
    await replay.open()
    await replay.close()
    await (await BroadcastStore.open(paths["broadcast.db"])).close()
    await (await WearablesStore(paths["wearables.db"]).open()).close()
    holders = [_hold_exclusive(p) for p in paths.values()]
    try:
        with pytest.raises(ReplayStoreError, match="cannot open"):
            await ReplayStore(paths["commands.db"]).open()
        broadcast = await BroadcastStore.open(paths["broadcast.db"])  # the loudspeakers go on, in memory
        assert await broadcast.load() == []
        await broadcast.close()
        with pytest.raises(StoreError):  # the wearables service runs without stored geofence state
            await WearablesStore(paths["wearables.db"]).open()
    finally:
        for holder in holders:
            holder.rollback()
            holder.close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name or ".broken-" in p.name) == []


async def test_replay_store_moves_a_damaged_file_aside(tmp_path: Path) -> None:
    from agent.replay import ReplayStore

    path = tmp_path / "commands.db"
    path.write_bytes(b"not a database" * 200)
    store = ReplayStore(path)
    await store.open()
    await store.close()
    assert store.reset_reason is not None and "moved aside" in store.reset_reason
    (moved,) = tmp_path.glob("commands.db.corrupt-*[0-9]")
    assert moved.read_bytes() == b"not a database" * 200
