"""The replay store: command ids the box has acted on, kept in SQLite until they expire, across restarts.

One small file (`state_dir/commands.db`, WAL, synchronous=FULL). An id is inserted, and committed, *before*
the command is dispatched: if the box dies between the commit and the handler, the broker redelivers the
command (its PUBACK was never sent) and the box refuses it as a replay. At most once, never twice: for a
loudspeaker that is the safe side.

The store also keeps the *time floor*: the latest wall-clock time the box has good reason to believe has
already passed (the highest `iat` it accepted, the last synchronised clock reading). The clock policy in
agent.commands uses it when the wall clock is obviously wrong (see docs/commands-and-keys.md).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import aiosqlite

log = logging.getLogger("agent.replay")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    id TEXT PRIMARY KEY,
    exp INTEGER NOT NULL,
    kid TEXT NOT NULL,
    received_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_exp ON seen (exp);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
) WITHOUT ROWID;
"""


def _move_aside(path: Path) -> Path:
    moved = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.replace(Path(f"{moved}{suffix}"))
    return moved


class ReplayStoreError(Exception):
    """The replay store cannot be used (not open, or the disk refused a write)."""


class ReplayStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self.floor = 0.0
        self.reset_reason: str | None = None  # set when this open() replaced an unusable store
        # After a reset: commands issued (iat) before this may have been obeyed already and the ids are lost;
        # they are refused until every one of them has expired (agent.commands). Kept in `meta` across restarts.
        self.reset_floor: float | None = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._open_db()
        except sqlite3.DatabaseError as exc:
            await self.close()
            moved = _move_aside(self.path)
            # Losing the store forgets which ids were used: a still-valid command could be replayed until it
            # expires. Refusing to start would silence emergency broadcasts instead; we log loudly and go on.
            self.reset_reason = f"replay store unusable ({exc}); moved aside to {moved.name}"
            log.error("commands: %s; starting a fresh one", self.reset_reason)
            await self._open_db()

    async def _open_db(self) -> None:
        db = self._db = await aiosqlite.connect(self.path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        cur = await db.execute("PRAGMA quick_check")
        result = [r[0] for r in await cur.fetchall()]
        if result != ["ok"]:
            raise sqlite3.DatabaseError(f"quick_check: {'; '.join(result[:3])}")
        cur = await db.execute("PRAGMA user_version")
        (version,) = await cur.fetchone()  # type: ignore[misc]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema v{version} is newer than this agent's v{SCHEMA_VERSION}")
        if version < SCHEMA_VERSION:
            await db.executescript(f"BEGIN;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        cur = await db.execute("SELECT value FROM meta WHERE name = 'floor'")
        row = await cur.fetchone()
        self.floor = float(row[0]) if row else 0.0
        cur = await db.execute("SELECT value FROM meta WHERE name = 'reset_floor'")
        row = await cur.fetchone()
        self.reset_floor = float(row[0]) if row else None

    async def set_reset_floor(self, value: float | None) -> None:
        """Record (or, with None, clear) the reset floor, committed before it is relied on."""
        db = self._conn()
        try:
            if value is None:
                await db.execute("DELETE FROM meta WHERE name = 'reset_floor'")
            else:
                await db.execute("INSERT INTO meta (name, value) VALUES ('reset_floor', ?) "
                                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (value,))
            await db.commit()
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.rollback()
            raise ReplayStoreError(f"cannot record the reset floor: {exc}") from exc
        self.reset_floor = value

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except sqlite3.Error as exc:
                log.warning("commands: closing the replay store: %s", exc)

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise ReplayStoreError("replay store is not open")
        return self._db

    async def remember(self, cmd_id: str, exp: int, kid: str, now: float, floor: float) -> bool:
        """Record `cmd_id` until `exp` and raise the time floor, in one commit. False if the id was seen."""
        db = self._conn()
        try:
            try:
                await db.execute("INSERT INTO seen (id, exp, kid, received_at) VALUES (?, ?, ?, ?)",
                                 (cmd_id, exp, kid, now))
            except sqlite3.IntegrityError:
                await db.rollback()
                return False
            if floor > self.floor:
                await db.execute("INSERT INTO meta (name, value) VALUES ('floor', ?) "
                                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (floor,))
            await db.commit()
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.rollback()
            raise ReplayStoreError(f"cannot record command id: {exc}") from exc
        self.floor = max(self.floor, floor)
        return True

    async def seen(self, cmd_id: str) -> bool:
        cur = await self._conn().execute("SELECT 1 FROM seen WHERE id = ?", (cmd_id,))
        return await cur.fetchone() is not None

    async def prune(self, before: float, floor: float | None = None) -> int:
        """Forget ids whose `exp` is before `before`; optionally raise the time floor. Returns rows removed."""
        db = self._conn()
        try:
            cur = await db.execute("DELETE FROM seen WHERE exp < ?", (int(before),))
            removed = cur.rowcount
            if floor is not None and floor > self.floor:
                await db.execute("INSERT INTO meta (name, value) VALUES ('floor', ?) "
                                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (floor,))
            await db.commit()
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.rollback()
            raise ReplayStoreError(f"cannot prune: {exc}") from exc
        if floor is not None:
            self.floor = max(self.floor, floor)
        return removed

    async def count(self) -> int:
        cur = await self._conn().execute("SELECT count(*) FROM seen")
        (n,) = await cur.fetchone()  # type: ignore[misc]
        return int(n)
