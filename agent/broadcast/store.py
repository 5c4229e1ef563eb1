"""The broadcast engine's state on disk: state_dir/broadcast.db (SQLite), one row per item, as JSON.

Small and boring on purpose: the engine's state is a handful of items, written after each change in one
transaction (WAL, synchronous=FULL), read once at start so a reboot resumes the schedule. A database
that cannot be opened or read is moved aside with a timestamp and a fresh one begins (logged): a broken
file must never keep the loudspeakers from working.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

import aiosqlite

from agent.broadcast.items import BroadcastError, Item

log = logging.getLogger("agent.broadcast.store")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


class StoreError(BroadcastError):
    """The broadcast database cannot be used even after starting a fresh one."""


class BroadcastStore:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._unsaved: set[str] = set()  # ids a refused save left unwritten; retried with the next save

    @classmethod
    async def open(cls, path: Path) -> BroadcastStore:
        try:
            return await cls._open(path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.broken-{int(time.time())}")
            log.error("broadcast database %s unusable (%s); moved to %s, starting empty", path, exc, aside.name)
            _move_aside(path, aside)
            try:
                return await cls._open(path)
            except sqlite3.DatabaseError as exc2:
                raise StoreError(f"cannot create {path}: {exc2}") from exc2

    @classmethod
    async def _open(cls, path: Path) -> BroadcastStore:
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            row = await (await db.execute("PRAGMA quick_check")).fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
            version = (await (await db.execute("PRAGMA user_version")).fetchone() or (0,))[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this agent")
            await db.executescript(SCHEMA)
            await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

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


def _move_aside(path: Path, aside: Path) -> None:
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
