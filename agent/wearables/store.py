"""state_dir/wearables.db: geofence state per (wearer, fence) and the county's last fence and wearer lists.

aiosqlite, like every other store on the box: no SQLite call runs on the event loop (a `synchronous=FULL`
commit on an SD card takes 10-100 ms, which would stall PUBACKs, the broadcast loop and the watchdog).
`synchronous=FULL` because a county command that was acknowledged must survive a power cut.

Two ways in:
- county documents (`save_doc`) are awaited: the command's `applied` receipt follows the commit.
- geofence state is write-behind: `queue_tracks()` never waits; a writer task commits what is queued
  (coalesced per (wearer, fence), the newest state wins) in one transaction. The service queues a state
  change only after the message it caused is in the outbox's queue, so an alarm never waits on this
  file (a power cut in between can repeat an exit after the restart, never lose one). A failed write is
  logged and kept queued for the next change; the state is right in memory meanwhile.

Opened through agent.sqlite_store (schema versions follow PRAGMA user_version). A damaged file is moved
aside (`wearables.db.corrupt-<UTC stamp>`, with its -wal and -shm) and a fresh one started, with an error
in the log; a locked or unwritable one raises StoreError and the service runs without stored state: the
agent keeps relaying SOS alarms rather than refusing to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from agent.sqlite_store import SchemaTooNew, is_corruption, move_aside, open_sqlite
from agent.wearables.geofence import FenceState, Track

log = logging.getLogger(__name__)

MIGRATIONS = (
    # v1
    """
CREATE TABLE fence_track (
    wearer TEXT NOT NULL,
    fence TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    notified INTEGER NOT NULL,
    since_ts REAL NOT NULL,
    PRIMARY KEY (wearer, fence)
);
CREATE TABLE county_doc (
    name TEXT PRIMARY KEY,      -- 'geofence' | 'wearers'
    body TEXT NOT NULL,         -- the command's data, JSON
    cmd TEXT,                   -- the command id that set it
    ts REAL NOT NULL
);
""",
)

TrackKey = tuple[str, str]  # (wearer, fence)
TrackChange = tuple[TrackKey, Track | None]  # None: the track is gone (fence dropped or unassigned)

_UPSERT = "INSERT OR REPLACE INTO fence_track VALUES (?, ?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM fence_track WHERE wearer = ? AND fence = ?"


class StoreError(Exception):
    """wearables.db cannot be opened or written."""


class WearablesStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection
        self._pending: dict[TrackKey, Track | None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self.track_writes = 0  # committed write-behind batches
        self.write_failures = 0

    # --- lifecycle ----------------------------------------------------------------------------------

    async def open(self) -> WearablesStore:
        """Open (or create) the file. Damaged, or from a newer agent: moved aside (with its -wal and -shm)
        and a fresh one begins. Locked, read-only or failing: StoreError (the service runs without it)."""
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
            self._db = await open_sqlite(self.path, migrations=MIGRATIONS)
        except (sqlite3.Error, SchemaTooNew) as exc:
            if not (is_corruption(exc) or isinstance(exc, SchemaTooNew)):
                raise StoreError(f"{self.path}: {exc}") from exc
            try:
                aside = await asyncio.to_thread(move_aside, self.path,
                                                "corrupt" if is_corruption(exc) else "newer")
                log.error("%s is unusable (%s); moved aside to %s, geofence state starts afresh",
                          self.path, exc, aside)
                self._db = await open_sqlite(self.path, migrations=MIGRATIONS)
            except (sqlite3.Error, SchemaTooNew, OSError) as exc2:
                raise StoreError(f"{self.path}: {exc2}") from exc2
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        self._writer = asyncio.create_task(self._write_behind(), name="wearables.store.writer")
        return self

    async def close(self) -> None:
        """Write what is queued (one attempt), then close. Idempotent."""
        if self._db is None:
            return
        try:
            if self._writer is not None and not self._writer.done():
                await self.flush()
        finally:
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
                self._writer = None
            db, self._db = self._db, None
            await db.close()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("wearables store is not open")
        return self._db

    # --- geofence tracks ----------------------------------------------------------------------------

    async def load_tracks(self) -> list[Track]:
        try:
            async with self.db.execute(
                    "SELECT wearer, fence, fingerprint, state, notified, since_ts FROM fence_track") as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        out = []
        for wearer, fence, fp, state, notified, since in rows:
            try:
                out.append(Track(wearer, fence, fp, FenceState(state), bool(notified), float(since)))
            except ValueError:
                log.warning("ignoring a stored geofence state %r for %s/%s", state, wearer, fence)
        return out

    def queue_tracks(self, changes: Iterable[TrackChange]) -> None:
        """Write these states (None: delete) soon, in the writer task. Never waits; never raises."""
        if self._db is None:
            return
        for key, track in changes:
            self._pending[key] = track
        if self._pending:
            self._idle.clear()
            self._wake.set()

    @property
    def unsaved(self) -> int:
        """States queued and not yet committed (a failed write keeps them here)."""
        return len(self._pending)

    async def flush(self) -> bool:
        """Wait until the writer has tried everything queued; True when nothing is left unsaved."""
        writer = self._writer
        if writer is None or writer.done():  # closed, or the writer died (its error is logged): nothing to wait for
            return not self._pending
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait({idle, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        return not self._pending

    async def save_tracks(self, tracks: Iterable[Track]) -> bool:
        """Queue these states and wait for the writer (tests, tools)."""
        self.queue_tracks(((t.wearer, t.fence), t) for t in tracks)
        return await self.flush()

    async def _write_behind(self) -> None:
        try:
            await self._write_loop()
        except Exception:  # a bug here must not pass unseen; the alarms do not depend on this task
            log.exception("wearables: the geofence state writer stopped; state is kept in memory only")
            raise

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            up = [(t.wearer, t.fence, t.fingerprint, t.state.value, int(t.notified), t.since_ts)
                  for t in batch.values() if t is not None]
            down = [key for key, t in batch.items() if t is None]
            try:
                await self._write(((_UPSERT, up), (_DELETE, down)))
            except StoreError as exc:  # the state is right in memory; only a restart would forget it
                self.write_failures += 1
                log.error("wearables: could not persist geofence state (%d change(s) kept for the next "
                          "write): %s", len(batch), exc)
                for key, track in batch.items():
                    self._pending.setdefault(key, track)  # a newer state queued meanwhile wins
            else:
                self.track_writes += 1
            if not self._wake.is_set():
                self._idle.set()

    # --- county documents ---------------------------------------------------------------------------

    async def load_doc(self, name: str) -> dict[str, Any] | None:
        try:
            async with self.db.execute("SELECT body FROM county_doc WHERE name = ?", (name,)) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        if row is None:
            return None
        try:
            body = json.loads(row[0])
        except ValueError:
            log.error("stored %s document is not JSON; ignoring it", name)
            return None
        return body if isinstance(body, dict) else None

    async def save_doc(self, name: str, body: dict[str, Any], cmd: str | None, ts: float) -> None:
        await self._write((("INSERT OR REPLACE INTO county_doc VALUES (?, ?, ?, ?)",
                            [(name, json.dumps(body, ensure_ascii=False, separators=(",", ":")), cmd, ts)]),))

    async def _write(self, steps: Iterable[tuple[str, list[tuple[Any, ...]]]]) -> None:
        db = self.db
        async with self._lock:
            try:
                for sql, rows in steps:
                    if rows:
                        await db.executemany(sql, rows)
                await db.commit()
            except (sqlite3.Error, UnicodeEncodeError) as exc:  # a lone surrogate cannot be bound
                with contextlib.suppress(sqlite3.Error):
                    await db.rollback()
                raise StoreError(f"{self.path}: {exc}") from exc
