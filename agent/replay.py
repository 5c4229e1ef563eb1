"""The replay store: command ids the box has acted on, kept in SQLite until they expire, across restarts.

One small file (`state_dir/commands.db`, WAL, synchronous=FULL). An id is inserted, and committed, *before*
the command is dispatched: if the box dies between the commit and the handler, the broker redelivers the
command (its PUBACK was never sent) and the box refuses it as a replay. At most once, never twice: for a
loudspeaker that is the safe side.

The store also keeps the *time floor*: the latest wall-clock time the box has good reason to believe has
already passed (accepted signed `iat`, moved a bounded step at a time: agent.commands.next_floor; an
NTP-synchronised clock may lower it, `lower_floor`). The clock policy in agent.commands uses it when the
wall clock is obviously wrong (see docs/commands-and-keys.md).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import aiosqlite

from agent.sqlite_store import SchemaTooNew, is_corruption, move_aside, open_sqlite

log = logging.getLogger("agent.replay")

MIGRATIONS = (
    # v1
    """
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
""",
)


class ReplayStoreError(Exception):
    """The replay store cannot be used (not open, locked or unwritable at open, or the disk refused a write)."""


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
        """Open the store. A damaged file, or one from a newer agent, is moved aside and a fresh one begins:
        losing the store forgets which ids were used (agent.commands refuses older commands until they have
        expired), while refusing to start would silence emergency broadcasts. A locked, read-only or
        failing file is not moved aside (that would forget the ids for nothing): ReplayStoreError.
        """
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        try:
            await self._open_db()
        except (sqlite3.Error, SchemaTooNew) as exc:
            await self.close()
            if not (is_corruption(exc) or isinstance(exc, SchemaTooNew)):
                raise ReplayStoreError(f"cannot open the replay store {self.path}: {exc}") from exc
            moved = move_aside(self.path, "corrupt" if is_corruption(exc) else "newer")
            self.reset_reason = f"replay store unusable ({exc}); moved aside to {moved.name}"
            log.error("commands: %s; starting a fresh one", self.reset_reason)
            try:
                await self._open_db()
            except (sqlite3.Error, SchemaTooNew) as exc2:
                await self.close()
                raise ReplayStoreError(f"cannot create the replay store {self.path}: {exc2}") from exc2

    async def _open_db(self) -> None:
        db = self._db = await open_sqlite(self.path, migrations=MIGRATIONS)
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

    async def lower_floor(self, value: float) -> None:
        """Set the time floor to `value` even if it is lower (an NTP-synchronised clock overrules it)."""
        db = self._conn()
        try:
            await db.execute("INSERT INTO meta (name, value) VALUES ('floor', ?) "
                             "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (value,))
            await db.commit()
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.rollback()
            raise ReplayStoreError(f"cannot lower the time floor: {exc}") from exc
        self.floor = value

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
