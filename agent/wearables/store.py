"""state_dir/wearables.db: geofence state per (wearer, fence) and the county's last fence and wearer lists.

Plain sqlite3, synchronously, on purpose: writes happen on state edges and commands (a few a day per
wearer), each a single small transaction in WAL mode that takes well under a millisecond, so a
thread hop (aiosqlite) would cost more than it saves. `synchronous=FULL` because a geofence edge or a
county command that was acknowledged must survive a power cut.

Opened through agent.sqlite_store (schema versions follow PRAGMA user_version). A damaged file is moved
aside (`wearables.db.corrupt-<UTC stamp>`, with its -wal and -shm) and a fresh one started, with an error
in the log; a locked or unwritable one raises StoreError and the service runs without stored state: the
agent keeps relaying SOS alarms rather than refusing to start.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.sqlite_store import SchemaTooNew, is_corruption, move_aside, open_sqlite_sync
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


class StoreError(Exception):
    """wearables.db cannot be opened or written."""


class WearablesStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    def open(self) -> WearablesStore:
        """Open (or create) the file. Damaged, or from a newer agent: moved aside (with its -wal and -shm)
        and a fresh one begins. Locked, read-only or failing: StoreError (the service runs without it)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = open_sqlite_sync(self.path, migrations=MIGRATIONS)
        except (sqlite3.Error, SchemaTooNew) as exc:
            if not (is_corruption(exc) or isinstance(exc, SchemaTooNew)):
                raise StoreError(f"{self.path}: {exc}") from exc
            try:
                aside = move_aside(self.path, "corrupt" if is_corruption(exc) else "newer")
                log.error("%s is unusable (%s); moved aside to %s, geofence state starts afresh",
                          self.path, exc, aside)
                self._db = open_sqlite_sync(self.path, migrations=MIGRATIONS)
            except (sqlite3.Error, SchemaTooNew, OSError) as exc2:
                raise StoreError(f"{self.path}: {exc2}") from exc2
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("wearables store is not open")
        return self._db

    # --- geofence tracks ----------------------------------------------------------------------------

    def load_tracks(self) -> list[Track]:
        rows = self.db.execute("SELECT wearer, fence, fingerprint, state, notified, since_ts FROM fence_track")
        out = []
        for wearer, fence, fp, state, notified, since in rows:
            try:
                out.append(Track(wearer, fence, fp, FenceState(state), bool(notified), float(since)))
            except ValueError:
                log.warning("ignoring a stored geofence state %r for %s/%s", state, wearer, fence)
        return out

    def save_tracks(self, tracks: Iterable[Track]) -> None:
        rows = [(t.wearer, t.fence, t.fingerprint, t.state.value, int(t.notified), t.since_ts) for t in tracks]
        if not rows:
            return
        self._write("INSERT OR REPLACE INTO fence_track VALUES (?, ?, ?, ?, ?, ?)", rows)

    def delete_tracks(self, keys: Iterable[tuple[str, str]]) -> None:
        rows = list(keys)
        if rows:
            self._write("DELETE FROM fence_track WHERE wearer = ? AND fence = ?", rows)

    # --- county documents ---------------------------------------------------------------------------

    def load_doc(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM county_doc WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            body = json.loads(row[0])
        except ValueError:
            log.error("stored %s document is not JSON; ignoring it", name)
            return None
        return body if isinstance(body, dict) else None

    def save_doc(self, name: str, body: dict[str, Any], cmd: str | None, ts: float) -> None:
        self._write("INSERT OR REPLACE INTO county_doc VALUES (?, ?, ?, ?)",
                    [(name, json.dumps(body, ensure_ascii=False, separators=(",", ":")), cmd, ts)])

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"{self.path}: {exc}") from exc
