"""The outbox's SQLite schema, one entry per version (`PRAGMA user_version` = how many are applied).

A migration runs in one transaction with the user_version bump, so a power cut leaves either the old
schema or the new one. Never edit a released entry: append a new one.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # v1
    """
    CREATE TABLE outbox (
        seq  INTEGER PRIMARY KEY AUTOINCREMENT,  -- the envelope's seq; AUTOINCREMENT: never reused
        cls  INTEGER NOT NULL,                   -- MsgClass: 0 alarm, 1 receipt, 2 event, 3 telemetry
        ts   INTEGER NOT NULL,                   -- when it happened, epoch ms
        kind TEXT    NOT NULL,
        body BLOB    NOT NULL                    -- the envelope exactly as it is published
    );
    CREATE INDEX outbox_cls_seq ON outbox (cls, seq);
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,                  -- e.g. evicted.telemetry, refused.event, expired.telemetry
        value INTEGER NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
