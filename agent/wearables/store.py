"""state_dir/wearables.db: geofence state per (wearer, fence) and the county's last fence and wearer lists.

Plain sqlite3, synchronously, on purpose: writes happen on state edges and commands (a few a day per
wearer), each a single small transaction in WAL mode that takes well under a millisecond, so a
thread hop (aiosqlite) would cost more than it saves. `synchronous=FULL` because a geofence edge or a
county command that was acknowledged must survive a power cut.

Schema versions follow PRAGMA user_version; a file that fails the integrity check at open is moved
aside (`wearables.db.corrupt-<epoch>`) and a fresh one started, with an error in the log: the agent
keeps relaying SOS alarms rather than refusing to start.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.wearables.geofence import FenceState, Track

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA_V1 = """
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
"""


class StoreError(Exception):
    """wearables.db cannot be opened or written."""


class WearablesStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    def open(self) -> WearablesStore:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            if not self.path.exists():
                raise StoreError(f"{self.path}: {exc}") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("%s is damaged (%s); moved aside to %s, geofence state starts afresh", self.path, exc, aside)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as exc2:
                raise StoreError(f"{self.path}: {exc2}") from exc2
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return self

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {ok[0] if ok else 'no answer'}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this agent ({SCHEMA_VERSION})")
            if version < 1:
                # one transaction: a power cut leaves either no schema or all of it
                db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA_V1}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
        except BaseException:
            db.close()
            raise
        return db

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
