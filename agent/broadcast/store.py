"""The broadcast engine's state on disk: state_dir/broadcast.db (SQLite), one row per item, as JSON.

Small and boring on purpose: the engine's state is a handful of items, written after each change in one
transaction (WAL, synchronous=FULL), read once at start so a reboot resumes the schedule. A damaged
database is moved aside with a timestamp and a fresh one begins (logged); a locked or unwritable one is
left alone and the schedule lives in memory (see `open`): a broken file must never keep the loudspeakers
from working.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import aiosqlite

from agent.broadcast.items import BroadcastError, Item
from agent.sqlite_store import SchemaTooNew, is_corruption, move_aside, open_sqlite

log = logging.getLogger("agent.broadcast.store")

MIGRATIONS = (
    # v1
    "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, body TEXT NOT NULL);",
)


class StoreError(BroadcastError):
    """The broadcast database cannot be used even after starting a fresh one."""


class BroadcastStore:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._unsaved: set[str] = set()  # ids a refused save left unwritten; retried with the next save

    @classmethod
    async def open(cls, path: Path) -> BroadcastStore:
        """Open (or create) the database. Never keeps the loudspeakers from working:

        - damaged: moved aside (`.broken-<UTC stamp>`, with its -wal and -shm) and a fresh one begins;
        - written by a newer agent: moved aside (`.newer-<stamp>`, kept for the upgrade) likewise;
        - locked, read-only or failing: left alone, and the schedule is kept in memory only (logged).
        StoreError only if not even that works.
        """
        try:
            return cls(await open_sqlite(path, migrations=MIGRATIONS), path)
        except (sqlite3.Error, SchemaTooNew) as exc:
            if not (is_corruption(exc) or isinstance(exc, SchemaTooNew)):
                log.error("broadcast database %s unusable (%s); left as it is, the schedule is kept in memory "
                          "only until a restart", path, exc)
                return cls(await _in_memory(), path)
            aside = move_aside(path, "broken" if is_corruption(exc) else "newer")
            log.error("broadcast database %s unusable (%s); moved to %s, starting empty", path, exc, aside.name)
        try:
            return cls(await open_sqlite(path, migrations=MIGRATIONS), path)
        except (sqlite3.Error, SchemaTooNew) as exc2:
            raise StoreError(f"cannot create {path}: {exc2}") from exc2

    async def load(self) -> list[Item]:
        """The saved items; an unreadable table is logged and the schedule starts empty (never a crash)."""
        items = []
        try:
            async with self._db.execute("SELECT id, body FROM items") as cur:
                async for item_id, body in cur:
                    try:
                        items.append(Item.from_json(body))
                    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
                        log.error("broadcast item %s unreadable, dropped: %s", item_id, exc)
                        await self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
            await self._db.commit()
        except sqlite3.Error as exc:
            await self._rollback()
            log.error("broadcast database %s unreadable (%s); %d item(s) read, the rest lost", self.path, exc,
                      len(items))
        return items

    async def save(self, items: dict[str, Item], ids: set[str]) -> bool:
        """Write the items named in `ids` as they are now in `items` (absent = deleted), atomically.

        A write the disk refuses (full, read-only, I/O error) is logged once per episode and kept: the
        engine's state stays in memory and the same ids are written again with the next save. False then.
        """
        ids = ids | self._unsaved
        if not ids:
            return True
        try:
            for item_id in ids:
                item = items.get(item_id)
                if item is None:
                    await self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
                else:
                    await self._db.execute("INSERT OR REPLACE INTO items (id, body) VALUES (?, ?)",
                                           (item_id, item.to_json()))
            await self._db.commit()
        except sqlite3.Error as exc:
            await self._rollback()
            if not self._unsaved:
                log.error("broadcast database %s: cannot save (%s); the schedule is kept in memory and saved "
                          "again when the disk allows", self.path, exc)
            self._unsaved = ids
            return False
        if self._unsaved:
            log.warning("broadcast database %s: saving works again", self.path)
            self._unsaved = set()
        return True

    @property
    def unsaved(self) -> set[str]:
        """Ids whose latest state is not on disk yet (a failed save)."""
        return set(self._unsaved)

    async def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                await self._db.rollback()
        except sqlite3.Error as exc:
            log.warning("broadcast database %s: rollback failed: %s", self.path, exc)

    async def close(self) -> None:
        try:
            await self._db.close()
        except sqlite3.Error as exc:
            log.warning("broadcast database %s: closing: %s", self.path, exc)


async def _in_memory() -> aiosqlite.Connection:
    db = await aiosqlite.connect(":memory:")
    try:
        await db.executescript(MIGRATIONS[-1])
    except sqlite3.Error as exc:
        await db.close()
        raise StoreError(f"cannot create an in-memory schedule: {exc}") from exc
    return db
