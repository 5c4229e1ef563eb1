"""Opening the agent's SQLite files the same way everywhere: WAL, fsync policy, integrity check, migrations.

Every store on the box (outbox, replay ids, broadcast schedule, wearables state) opens its file through
`open_sqlite` (aiosqlite) or `open_sqlite_sync` (plain sqlite3), and decides itself what to do with what
goes wrong; this module only says *what* went wrong, with one error per case:

- `Corrupt` (a `sqlite3.DatabaseError`): `PRAGMA quick_check` found damage. `is_corruption()` is true for it
  and for SQLite's own SQLITE_CORRUPT / SQLITE_NOTADB: the only errors that justify moving a file aside.
- `SchemaTooNew`: the file was written by a newer agent (user_version above what this agent knows). Not
  damage: a store that holds anything valuable refuses to start rather than lose it to a downgrade.
- anything else (`sqlite3.OperationalError` "database is locked", read-only, I/O error) is raised as
  SQLite gave it: a busy or unwritable file is not a damaged one.

`move_aside()` renames a damaged file *with* its -wal and -shm: the WAL holds committed transactions
and is the evidence; deleting it would throw both away.

`auto_vacuum` ("INCREMENTAL" or "FULL") is set before anything else, so a new file gets it; SQLite cannot
change it on a file that has tables without a VACUUM, so an existing file keeps its mode and the store
decides when a VACUUM is cheap enough to convert it (`auto_vacuum_mode` tells it the mode in force).

Migrations follow PRAGMA user_version: `migrations[v]` takes the schema from version v to v+1 and runs
in one transaction together with the version bump, so a power cut leaves the old schema or the new one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_AUTO_VACUUM = ("NONE", "FULL", "INCREMENTAL")  # PRAGMA auto_vacuum's values 0, 1, 2
_MIN_PAGES = 16  # max_file_bytes never caps a file below this: SQLite needs a few pages for the schema


class SqliteStoreError(Exception):
    """A store file this agent must not use as it is."""


class SchemaTooNew(SqliteStoreError):
    """The file's schema is newer than this agent's: written by a newer agent, not damaged."""

    def __init__(self, path: Path, found: int, supported: int) -> None:
        super().__init__(f"{path}: schema v{found} is newer than this agent's v{supported}: "
                         "install the newer agent again (the file is kept as it is)")
        self.path = path
        self.found = found
        self.supported = supported


class Corrupt(sqlite3.DatabaseError):
    """PRAGMA quick_check found damage."""


def is_corruption(exc: sqlite3.Error | SqliteStoreError) -> bool:
    """True only for damage (quick_check failed, SQLITE_CORRUPT*, SQLITE_NOTADB): locked, read-only and
    I/O errors, and a newer schema, are not."""
    if isinstance(exc, Corrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    # sqlite_errorcode is the extended code (e.g. SQLITE_CORRUPT_INDEX); the low byte is the primary one
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def move_aside(path: Path, tag: str = "corrupt") -> Path:
    """Rename `path` (and its -wal / -shm) to `<name>.<tag>-<UTC stamp with ns>`; never deletes anything.

    Returns the new name of the main file (which may not exist, if only a -wal was there). The ns part
    keeps two moves within a second apart.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{target}{suffix}"))
    return target


def _check_auto_vacuum(auto_vacuum: str | None) -> None:
    if auto_vacuum is not None and auto_vacuum.upper() not in _AUTO_VACUUM:
        raise ValueError(f"auto_vacuum must be one of {', '.join(_AUTO_VACUUM)}, not {auto_vacuum!r}")


def open_sqlite_sync(path: Path, *, migrations: Sequence[str], synchronous: str = "FULL",
                     max_file_bytes: int | None = None, auto_vacuum: str | None = None) -> sqlite3.Connection:
    """Open (creating) `path`, checked and migrated; the connection is in autocommit mode
    (isolation_level=None): the caller writes its own BEGIN / COMMIT.

    auto_vacuum: the mode a *new* file gets (see the module doc); None leaves SQLite's default (NONE).
    Raises Corrupt, SchemaTooNew, or the sqlite3.Error SQLite raised (see the module doc).
    """
    if synchronous.upper() not in _SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
    _check_auto_vacuum(auto_vacuum)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        if auto_vacuum is not None:  # before journal_mode: switching to WAL writes page 1, fixing the mode
            db.execute(f"PRAGMA auto_vacuum={auto_vacuum.upper()}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        if max_file_bytes:
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
            db.execute(f"PRAGMA max_page_count={max(_MIN_PAGES, max_file_bytes // page_size)}")
        result = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
        if result != ["ok"]:
            raise Corrupt(f"quick_check: {'; '.join(str(r) for r in result[:2])}"[:200].replace("\n", " "))
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > len(migrations):
            raise SchemaTooNew(path, version, len(migrations))
        for v in range(version, len(migrations)):
            try:
                db.executescript(f"BEGIN IMMEDIATE;\n{migrations[v]}\nPRAGMA user_version={v + 1};\nCOMMIT;")
            except BaseException:
                if db.in_transaction:
                    db.rollback()
                raise
    except BaseException as exc:
        if isinstance(exc, sqlite3.Error) and is_corruption(exc):
            _close_keeping_wal(db, path)
        else:
            db.close()
        raise
    return db


def _close_keeping_wal(db: sqlite3.Connection, path: Path) -> None:
    """Close a connection to a damaged file without losing its -wal.

    SQLite checkpoints the WAL into the main file and deletes it when the last connection closes, even
    after quick_check found damage; Python 3.11 cannot switch that off (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE
    needs 3.12's setconfig). So a copy is taken first and put back if SQLite removed the file: the frames
    are the same ones it checkpointed, so the pair stays consistent, and move_aside takes it along.
    """
    wal = Path(f"{path}-wal")
    keep = Path(f"{path}-wal.keep")
    kept = True
    try:
        shutil.copyfile(wal, keep)
    except OSError:  # no WAL, or no room for a copy: close as usual
        kept = False
    db.close()
    if kept:
        if wal.exists():
            keep.unlink(missing_ok=True)
        else:
            os.replace(keep, wal)


def _check(path: Path, migrations: Sequence[str], synchronous: str, max_file_bytes: int | None,
           auto_vacuum: str | None) -> None:
    open_sqlite_sync(path, migrations=migrations, synchronous=synchronous, max_file_bytes=max_file_bytes,
                     auto_vacuum=auto_vacuum).close()


async def open_sqlite(path: Path, *, migrations: Sequence[str], synchronous: str = "FULL",
                      max_file_bytes: int | None = None, auto_vacuum: str | None = None) -> aiosqlite.Connection:
    """The aiosqlite twin of `open_sqlite_sync`: same checks, same errors.

    The check and migrations run once on a plain sqlite3 connection in a thread (one implementation for
    both twins); the returned aiosqlite connection then sets the per-connection pragmas again.
    """
    _check_auto_vacuum(auto_vacuum)
    await asyncio.to_thread(_check, path, migrations, synchronous, max_file_bytes, auto_vacuum)
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        if max_file_bytes:
            cur = await db.execute("PRAGMA page_size")
            (page_size,) = await cur.fetchone()  # type: ignore[misc]
            await db.execute(f"PRAGMA max_page_count={max(_MIN_PAGES, max_file_bytes // page_size)}")
    except BaseException:
        await db.close()
        raise
    return db


async def auto_vacuum_mode(db: aiosqlite.Connection) -> str:
    """The auto_vacuum mode in force on `db`'s file: "NONE", "FULL" or "INCREMENTAL"."""
    cur = await db.execute("PRAGMA auto_vacuum")
    row = await cur.fetchone()
    await cur.close()
    value = row[0] if row else 0
    return _AUTO_VACUUM[value] if isinstance(value, int) and 0 <= value < len(_AUTO_VACUUM) else "NONE"
