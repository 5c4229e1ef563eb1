"""Every table of the county server, in SQLAlchemy 2 Core (the only place the schema is written).

The same tables and the same SQL run on SQLite (WAL) and PostgreSQL. Times are epoch milliseconds
(BigInteger) like the envelopes, except broadcast `start`/`end`/`exp`, which are epoch seconds like the
signed command. Migrations (county/store/migrations) create and change these tables; a new column here
needs a new migration in the same commit.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

BOX_ID = String(64)
ENVELOPE_ID = String(160)  # "box:seq"
COMMAND_ID = String(64)
USER = String(64)

# Every box that ever reported, registered in the regions file or not (names come from that file).
boxes = Table(
    "boxes", metadata,
    Column("id", BOX_ID, primary_key=True),
    Column("state", String(16), nullable=False, server_default="unknown"),  # online | offline | unknown
    Column("state_ts", BigInteger),            # `ts` of the newest retained state message
    Column("version", String(64)),
    Column("groups", JSON),                    # from the retained state (the box's own [box] groups)
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger),           # when the county last received anything from it
    Column("last_seq", BigInteger),            # highest envelope seq stored
    Column("backlog", Integer),                # sum of the last heartbeat's outbox depth
    Column("heartbeat", JSON),                 # the last heartbeat's `data`
    Column("heartbeat_ts", BigInteger),        # its envelope `ts` (an older heartbeat never overwrites it)
    # envelopes of this box deleted by retention (county/store/retention.py), so the seq gaps they leave
    # are not counted as missing (migration 0002)
    Column("purged", BigInteger, nullable=False, server_default="0"),
    # kept by ingest in the transaction that stores the envelopes (only rows new to `messages` count), so
    # the seq gaps (county/store/queries.py) read this table, not every stored message (migration 0003):
    Column("stored", BigInteger, nullable=False, server_default="0"),  # envelopes ever stored (retention too)
    Column("min_seq", BigInteger),             # lowest envelope seq ever stored
)

# Every envelope once, exactly as received (unique on the envelope id: a resend is ignored).
messages = Table(
    "messages", metadata,
    Column("id", ENVELOPE_ID, primary_key=True),
    Column("box", BOX_ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("class", String(16), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("received", BigInteger, nullable=False),
    Column("raw", Text, nullable=False),
    Index(None, "box", "seq"),
    Index(None, "class", "received"),
)

# What could not be read as an envelope of the topic it came on: kept, counted, never fatal.
quarantine = Table(
    "quarantine", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received", BigInteger, nullable=False),
    Column("topic", Text, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("size", Integer, nullable=False),    # the payload's full size
    Column("raw", LargeBinary, nullable=False),  # the payload, cut to QUARANTINE_MAX_BYTES
    Index(None, "received"),
)

# One row per alarm envelope (the box folds an episode into one alarm); lifecycle
# new -> acknowledged -> assigned -> resolved.
alarms = Table(
    "alarms", metadata,
    Column("id", ENVELOPE_ID, primary_key=True),   # the envelope id that opened it
    Column("box", BOX_ID, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("wearer", String(64)),
    Column("device", String(64)),
    Column("ts", BigInteger, nullable=False),      # when it happened (the envelope's ts)
    Column("received", BigInteger, nullable=False),
    Column("pos", JSON),
    Column("data", JSON, nullable=False),
    Column("state", String(16), nullable=False, server_default="new"),
    Column("acked_by", USER), Column("acked_at", BigInteger),
    Column("assigned_to", USER), Column("assigned_by", USER), Column("assigned_at", BigInteger),
    Column("resolved_by", USER), Column("resolved_at", BigInteger), Column("note", Text),
    Column("escalated_at", BigInteger), Column("escalations", Integer, nullable=False, server_default="0"),
    Index(None, "state", "ts"),
    Index(None, "box", "ts"),
    Index(None, "assigned_to", "state"),
)

positions_latest = Table(
    "positions_latest", metadata,
    Column("box", BOX_ID, primary_key=True),
    Column("wearer", String(64), primary_key=True),
    Column("device", String(64)),
    Column("lat", Float, nullable=False), Column("lon", Float, nullable=False),
    Column("acc_m", Float), Column("fix_ts", BigInteger), Column("ts", BigInteger, nullable=False),
)

positions = Table(
    "positions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("box", BOX_ID, nullable=False),
    Column("wearer", String(64), nullable=False),
    Column("lat", Float, nullable=False), Column("lon", Float, nullable=False),
    Column("acc_m", Float), Column("ts", BigInteger, nullable=False),
    Index(None, "wearer", "ts"),
    Index(None, "ts"),
)

# Broadcasts created through the server; `token` is the signed command (kept for resend).
broadcasts = Table(
    "broadcasts", metadata,
    Column("id", COMMAND_ID, primary_key=True),
    Column("state", String(24), nullable=False),   # awaiting_review | sent | cancelled | refused
    Column("created_by", USER, nullable=False), Column("created_at", BigInteger, nullable=False),
    Column("class", String(16), nullable=False), Column("level", Integer),
    Column("title", Text), Column("text", Text),
    Column("audio_mime", String(64)), Column("audio_sha256", String(64)), Column("audio", LargeBinary),
    Column("volume", Integer), Column("start", BigInteger), Column("end", BigInteger),
    Column("exp", BigInteger),
    Column("targets", JSON, nullable=False),        # ["box:ID" | "group:NAME", ...] as asked
    Column("boxes", JSON, nullable=False),          # the box ids expected to answer
    Column("token", Text),                          # the signed JWS, once signed
    Column("approved_by", USER), Column("approved_at", BigInteger),
    Column("cancelled_by", USER), Column("cancelled_at", BigInteger),
    Column("repeat", JSON),                         # the repeat rule (docs/broadcast.md), NULL = one-shot
    Index(None, "created_at"),
)

# The latest receipt of each box for each command (broadcasts, fence pushes, ...).
receipts = Table(
    "receipts", metadata,
    Column("cmd", COMMAND_ID, primary_key=True),
    Column("box", BOX_ID, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("ts", BigInteger, nullable=False),       # the receipt envelope's ts
    Column("envelope", ENVELOPE_ID, nullable=False),
)

camera_states = Table(
    "camera_states", metadata,
    Column("box", BOX_ID, primary_key=True),
    Column("camera", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("since", BigInteger),
    Column("updated", BigInteger, nullable=False),
)

# One row per camera per `cameras` telemetry period: seconds in each state (the time-weighted view).
camera_periods = Table(
    "camera_periods", metadata,
    Column("box", BOX_ID, primary_key=True),
    Column("camera", String(64), primary_key=True),
    Column("period_from", BigInteger, primary_key=True),
    Column("period_to", BigInteger, nullable=False),
    Column("seconds", JSON, nullable=False),        # {"online": s, "degraded": s, ...}
    Column("state", String(16), nullable=False),    # the state at the end of the period
    Index(None, "period_from"),
)

fences = Table(
    "fences", metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("feature", JSON, nullable=False),        # one GeoJSON Feature (a circle: Point + radius_m)
    Column("crs", String(8), nullable=False, server_default="WGS84"),
    Column("created_by", USER, nullable=False), Column("updated_at", BigInteger, nullable=False),
)

fence_pushes = Table(
    "fence_pushes", metadata,
    Column("id", COMMAND_ID, primary_key=True),     # the geofence.set command id (receipts.cmd)
    Column("fences", JSON, nullable=False),
    Column("assign", JSON, nullable=False),
    Column("targets", JSON, nullable=False), Column("boxes", JSON, nullable=False),
    Column("created_by", USER, nullable=False), Column("created_at", BigInteger, nullable=False),
    Column("token", Text),                          # the signed JWS (resend to the boxes that did not answer)
    Column("exp", BigInteger),                      # its expiry, epoch s
)

login_failures = Table(                             # failed logins, shared by every instance (auth.LoginLimiter)
    "login_failures", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(300), nullable=False),     # "user:NAME" or "addr:HOST"
    Column("ts", BigInteger, nullable=False),       # epoch ms
    Index("ix_login_failures_key_ts", "key", "ts"),
    Index("ix_login_failures_ts", "ts"),
)

users = Table(
    "users", metadata,
    Column("name", USER, primary_key=True),
    Column("role", String(16), nullable=False),     # admin | operator | reviewer | viewer | gridworker
    Column("scope", String(64)),                    # a township or village id; NULL = the whole county
    Column("password_hash", Text, nullable=False),
    Column("display_name", Text), Column("phone", String(32)),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
)

sessions = Table(
    "sessions", metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the bearer token; the token is never stored
    Column("user", USER, nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index(None, "expires_at"),
)

# Append-only, hash-chained: hash = sha256(prev_hash + canonical JSON of the row's other fields).
audit = Table(
    "audit", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", BigInteger, nullable=False),
    Column("actor", USER, nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", Text),
    Column("detail", Text, nullable=False),          # canonical JSON (sorted keys, no spaces)
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# Signed agent updates (issue 17, docs/updates.md; county/rollout.py). Wheels by content: a dependency
# wheel that two releases share is stored once. `data` is the file; boxes fetch it with Range requests.
release_files = Table(
    "release_files", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

releases = Table(
    "releases", metadata,
    Column("version", String(32), primary_key=True),
    Column("manifest", Text, nullable=False),            # the signed manifest.jws, as uploaded
    Column("manifest_sha256", String(64), nullable=False),
    Column("arch", String(32), nullable=False),
    Column("python", String(16), nullable=False),
    Column("min_from", String(32), nullable=False),
    Column("wheels", JSON, nullable=False),              # [{file, sha256, size, project}] from the manifest
    Column("size", BigInteger, nullable=False),          # all wheels
    Column("uploaded_by", USER, nullable=False),
    Column("uploaded_at", BigInteger, nullable=False),
)

rollouts = Table(
    "rollouts", metadata,
    Column("id", String(64), primary_key=True),
    Column("version", String(32), nullable=False),
    Column("targets", JSON, nullable=False),
    Column("boxes", JSON, nullable=False),               # every box it reaches, pilot first
    Column("pilot", Integer, nullable=False),            # how many of `boxes` are the pilot
    Column("wave_size", Integer, nullable=False),
    Column("max_failure_pct", Integer, nullable=False),
    Column("wave_timeout_s", Integer, nullable=False),
    Column("url", Text, nullable=False),                 # the manifest URL the boxes fetch
    Column("waves", JSON, nullable=False),               # [{cmd, boxes, sent_at}] as sent
    Column("state", String(16), nullable=False),         # pilot | running | halted | done
    Column("reason", Text),                              # why it halted
    Column("rev", Integer, nullable=False, server_default="0"),  # +1 per change: two advances never both send
    Column("created_by", USER, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
