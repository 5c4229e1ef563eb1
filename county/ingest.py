"""County ingest: every uplink message from the broker into the database, acknowledged only once stored.

One MQTT connection per server instance (paho 2, MQTT 5; `protocol = 4` for a 3.1.1-only broker):
- `$share/GROUP/P/box/+/up/#`: the envelopes; N instances with the same GROUP split them (mosquitto 2,
  EMQX, VerneMQ, HiveMQ). A persistent session (clean_start false + session expiry; a stable client id
  per instance) so the broker keeps what arrives while the instance is down.
- `P/box/+/state` (plain): the retained box states (brokers never deliver retained messages to shared
  subscriptions); every instance sees every state and stores it (idempotent: the newest `ts` wins).

A message is acknowledged (paho `manual_ack`, PUBACK) only after the transaction holding its row has
committed, in the order received, so kill -9 of the server loses nothing the broker had: the broker sends
the unacknowledged ones again to the same session at the next connect, and `INSERT ... ON CONFLICT DO
NOTHING` on the envelope id stores a resend once. Every derived row (alarm, position, receipt, camera)
is written in the same transaction as the message row and only when that row was new (RETURNING), so
derived rows are exactly once too.

Batches: up to `batch_max` messages or `batch_ms` after the first one, one transaction; a batch that
takes an alarm (class alarm) waits for nothing more: it takes only what is already queued (so a backlog
still makes full batches) and is committed, so an alarm never waits for the window (`is_alarm`). Alarms
are queued apart and go first, as a batch of their own, ahead of telemetry already received; PUBACKs
still go out in arrival order (an alarm's waits for the older messages' commits), one write per batch
(`_Client.ack_many`). paho reads its socket 64 KiB at a time (`_BufferedSocket`). `workers` > 1 runs
more ingest processes of the same shared subscription beside this one (`Workers`). paho's network
thread hands each message to the event loop (`call_soon_threadsafe`); at most `inflight` messages are
held (received, not yet acknowledged): MQTT 5 Receive Maximum tells the broker so, and with a broker that
ignores it paho's thread waits for room, which stops it reading the socket (TCP backpressure) rather than
growing memory.

A message that is not an envelope of its topic (not UTF-8, not JSON, missing fields, a `box`, class or
kind other than the topic's, a seq/ts out of range, bigger than `max_payload`) goes to `quarantine`
(raw cut to QUARANTINE_MAX_BYTES, full size kept), is counted, and is acknowledged: it is stored.

Events: after each commit, new alarms, changed receipts and box state changes go to the instance's
`EventHub`. `LiveFeed` is a second, non-shared connection to the alarm and receipt topics that feeds only
the hub, so an alarm stored by another instance still reaches this instance's event stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import signal
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclasses_fields
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import (
    JSON,
    BigInteger,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from agent.protocol.broker import parse_broker_url
from agent.protocol.envelope import Envelope, EnvelopeError, MsgClass
from agent.protocol.text import escape, scrub
from agent.protocol.topics import BOX_ID_RE, DEFAULT_PREFIX, Topics
from county.server.events import EventHub
from county.store import Database
from county.store.db import unnest_typed, upsert_on
from county.store.tables import (
    alarms,
    boxes,
    camera_periods,
    camera_states,
    messages,
    positions,
    positions_latest,
    quarantine,
    receipts,
)
from county.uplink_batch import parse_all
from drivers.aio import wait_within

log = logging.getLogger("county.ingest")

DEFAULT_GROUP = "village-county"
MAX_PAYLOAD = 1 << 20  # an envelope bigger than this is quarantined (the box's largest are a few KiB)
QUARANTINE_MAX_BYTES = 64 << 10  # raw kept of a quarantined payload
INT64_MAX = (1 << 63) - 1
ALARM_KINDS = frozenset({"sos", "fall", "band_removed", "geofence_exit", "lost_contact"})
CAMERA_STATES = frozenset({"online", "degraded", "offline", "unknown", "maintenance"})
BOX_STATES = frozenset({"online", "offline"})
RECEIPT_STATES = ("received", "rejected", "scheduled", "started", "finished", "failed", "cancelled",
                  "preempted", "expired", "applied")
FINAL_STATES = frozenset({"rejected", "finished", "failed", "cancelled", "preempted", "expired", "applied"})
_RANK = {"received": 0, "scheduled": 1, "started": 2}  # a final state ranks 3
NAME_MAX = 64  # wearer, device, camera, command id, version: String(64) columns
REASON_MAX = 2000
DB_RETRY_S = 1.0
# the columns of the rows Store writes with Database.write_rows (one array each on PostgreSQL)
MESSAGE_COLUMNS = ("id", "box", "seq", "ts", "class", "kind", "received", "raw")
BOX_AGG_COLUMNS = ("id", "first_seen", "last_seen", "last_seq", "stored", "min_seq")
POSITION_COLUMNS = ("box", "wearer", "lat", "lon", "acc_m", "ts")
LATEST_COLUMNS = ("box", "wearer", "device", "lat", "lon", "acc_m", "fix_ts", "ts")
CAMERA_STATE_COLUMNS = ("box", "camera", "state", "reason", "since", "updated")
RECEIPT_COLUMNS = ("cmd", "box", "state", "reason", "ts", "envelope")
HEARTBEAT_COLUMNS = ("b_id", "b_ts", "heartbeat", "heartbeat_ts", "backlog", "version")
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 16


@dataclass(frozen=True)
class IngestConfig:
    urls: Sequence[str]  # broker URLs (mqtt:// or mqtts://); tried in turn after a lost connection
    client_id: str = field(default_factory=lambda: f"village-county-{socket.gethostname()}")
    prefix: str = DEFAULT_PREFIX
    group: str = DEFAULT_GROUP
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None  # overrides the URL's user
    password: str | None = field(default=None, repr=False)
    protocol: int = 5  # 5 (MQTT 5) or 4 (MQTT 3.1.1: clean_session false, no Receive Maximum)
    session_expiry_s: int = 86_400  # how long the broker keeps this instance's session while it is away
    batch_max: int = 500
    batch_ms: float = 50.0
    inflight: int = 2000  # messages received and not yet acknowledged (MQTT 5 Receive Maximum)
    max_payload: int = MAX_PAYLOAD
    live: bool = True  # the LiveFeed (non-shared alarm/receipt subscription) for the hub
    live_hold_s: float = 0.1  # a wire copy waits this long for this instance's own ingest to claim it
    keepalive_s: int = 30
    workers: int = 1  # ingest processes on this host, this one included: see `Workers`

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("no broker URL")
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be 1..64")
        if self.inflight <= self.batch_max:
            raise ValueError("inflight must be larger than batch_max")
        if self.protocol not in (4, 5):
            raise ValueError("protocol must be 5 (MQTT 5) or 4 (MQTT 3.1.1)")


# ---------------------------------------------------------------------------------------------------
# parsing: one MQTT message -> what to store


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    gen: int  # connection generation it arrived on (an ack is sent only on that connection)
    received: int  # epoch ms
    held: bool = True  # holds one of ingest's `inflight` slots until acknowledged (or given up)
    done: int = 0  # 0 waiting, 1 committed (to be acknowledged in arrival order), 2 given up (never acked)


@dataclass(frozen=True, slots=True)
class Bad:
    reason: str


@dataclass(frozen=True, slots=True)
class Good:
    env: Envelope
    raw: str


@dataclass(frozen=True, slots=True)
class State:
    box: str
    state: str
    ts: int
    version: str | None
    groups: list[str] | None


@dataclass(frozen=True, slots=True)
class Skip:
    why: str


Parsed = Bad | Good | State | Skip


def _int64(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= INT64_MAX:
        return None
    return v


def _name(v: Any) -> str | None:
    """A short identifier for a String(64) column, or None."""
    if not isinstance(v, str) or not v or len(v) > NAME_MAX:
        return None
    return scrub(v).replace("\x00", "")


def _text(v: Any, limit: int = REASON_MAX) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else str(v)
    return scrub(s[:limit]).replace("\x00", "")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def parse(topics: Topics, item: Incoming, max_payload: int = MAX_PAYLOAD) -> Parsed:
    """What `item` is: an envelope of its topic, a box state, something to quarantine, or nothing."""
    if len(item.payload) > max_payload:
        return Bad(f"payload too large ({len(item.payload)} bytes > {max_payload})")
    box_of_state = topics.parse_state(item.topic)
    if box_of_state is not None:
        return _parse_state(box_of_state, item)
    where = topics.parse_up(item.topic)
    if where is None:
        return Bad("not an uplink topic")
    box, cls, kind = where
    if not BOX_ID_RE.match(box):
        return Bad("box id in the topic is not a valid box id")
    if len(kind) > NAME_MAX or not kind:
        return Bad("kind in the topic is empty or too long")
    try:
        text = item.payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad(f"not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        env = Envelope.decode(text)
    except EnvelopeError as exc:
        return Bad(f"not an envelope: {escape(exc, 150)}")
    if ("NaN" in text or "Infinity" in text) and _nonstandard_json(text):
        return Bad("not an envelope: NaN or Infinity is not JSON")
    if env.box != box:
        return Bad(f"box {escape(env.box, 70)} on the topic of box {box}")
    if env.cls is not cls or env.kind != kind:
        return Bad(f"{env.cls.wire}/{escape(env.kind, 70)} on the topic of {cls.wire}/{kind}")
    if _int64(env.seq) is None or _int64(env.ts) is None:
        return Bad("seq or ts out of range")
    return Good(env, text)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _nonstandard_json(text: str) -> bool:
    """Python's json reads NaN/Infinity; PostgreSQL's json does not, and neither does the contract."""
    try:
        json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return True
    return False


def _parse_state(box: str, item: Incoming) -> Parsed:
    if not item.payload:
        return Skip("retained state cleared")
    if not BOX_ID_RE.match(box):
        return Bad("box id in the topic is not a valid box id")
    try:
        obj = json.loads(item.payload.decode("utf-8"))
    except UnicodeDecodeError:
        return Bad("state: not UTF-8")
    except (ValueError, RecursionError):
        return Bad("state: not JSON")
    if not isinstance(obj, dict):
        return Bad("state: not a JSON object")
    state, ts = obj.get("state"), _int64(obj.get("ts"))
    if not isinstance(state, str) or state not in BOX_STATES or ts is None:
        return Bad("state: needs state online|offline and an integer ts")
    groups = obj.get("groups")
    if isinstance(groups, list):
        groups = [g for g in (_name(x) for x in groups) if g is not None][:256]
    else:
        groups = None
    return State(box, state, ts, _name(obj.get("version")), groups)


# ---------------------------------------------------------------------------------------------------
# API row shapes for the event stream (contract section 6)


def alarm_row(env: Envelope, pos: dict[str, Any] | None, state: str = "new") -> dict[str, Any]:
    return {"id": env.id, "box": env.box, "kind": env.kind, "wearer": _name(env.data.get("wearer")),
            "ts": env.ts, "state": state, "pos": pos}


def receipt_row(cmd: str, box: str, state: str, reason: str | None, ts: int) -> dict[str, Any]:
    return {"cmd": cmd, "box": box, "state": state, "reason": reason, "ts": ts}


def receipt_of(env: Envelope) -> dict[str, Any] | None:
    """The receipts row of a `cmd` receipt envelope (None when it does not name a command and a state)."""
    if env.cls is not MsgClass.RECEIPT or env.kind != "cmd":
        return None
    cmd, state = _name(env.data.get("cmd")), env.data.get("state")
    if cmd is None or not isinstance(state, str) or state not in RECEIPT_STATES:
        return None
    return {"cmd": cmd, "box": env.box, "state": state, "reason": _text(env.data.get("reason")),
            "ts": env.ts, "envelope": env.id}


def _rank(state: str) -> int:
    return 3 if state in FINAL_STATES else _RANK.get(state, 0)


def receipt_newer(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Does receipt `new` replace `old` (same cmd and box)? A newer ts wins, except that a non-final state
    never replaces a final one; at the same ts the later state of the lifecycle wins."""
    rn, ro = _rank(new["state"]), _rank(old["state"])
    if new["ts"] > old["ts"]:
        return not (ro == 3 and rn < 3)
    return new["ts"] == old["ts"] and rn > ro


def position_of(box: str, wearer: str | None, device: str | None, pos: Any, ts: int) -> dict[str, Any] | None:
    if wearer is None or not isinstance(pos, dict):
        return None
    lat, lon = _num(pos.get("lat")), _num(pos.get("lon"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return {"box": box, "wearer": wearer, "device": device, "lat": lat, "lon": lon,
            "acc_m": _num(pos.get("acc_m")), "fix_ts": _int64(pos.get("fix_ts")), "ts": ts}


def clean_pos(pos: Any) -> dict[str, Any] | None:
    p = position_of("", "-", None, pos, 0)
    if p is None:
        return None
    return {"lat": p["lat"], "lon": p["lon"], "acc_m": p["acc_m"], "fix_ts": p["fix_ts"]}


def backlog_of(data: dict[str, Any]) -> int | None:
    outbox = data.get("outbox")
    depth = outbox.get("depth") if isinstance(outbox, dict) else None
    if not isinstance(depth, dict):
        return None
    n = sum(v for v in depth.values() if isinstance(v, int) and not isinstance(v, bool) and v > 0)
    return min(n, (1 << 31) - 1)


# ---------------------------------------------------------------------------------------------------
# the store: one batch, one transaction


@dataclass
class Outcome:
    events: list[tuple[str, dict[str, Any], Hashable]] = field(default_factory=list)
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0


def _newer_int(col: Any, new: Any) -> Any:
    """SQL: the larger of a nullable column and a new value (the same on SQLite and PostgreSQL)."""
    return case((or_(col.is_(None), col < new), new), else_=col)


def _older_int(col: Any, new: Any) -> Any:
    return case((or_(col.is_(None), col > new), new), else_=col)


def _lit(v: str | int) -> Any:
    """One of our own constants (a receipt state, a rank) as literal SQL: a statement with no parameters but
    the rows' goes to Database.write_rows whole (its PostgreSQL form takes only the row arrays)."""
    return literal_column(f"'{v}'" if isinstance(v, str) else str(int(v)))


def _rank_sql(col: Any) -> Any:
    # equality, not IN: an IN list is an "expanding" parameter, which executemany cannot take
    return case(*((col == _lit(s), _lit(3)) for s in sorted(FINAL_STATES)),
                *((col == _lit(s), _lit(r)) for s, r in _RANK.items()), else_=_lit(0))


def is_alarm(topics: Topics, item: Incoming) -> bool:
    """An envelope of class alarm (by its topic): the batch that takes it stops waiting for more."""
    where = topics.parse_up(item.topic)
    return where is not None and where[1] is MsgClass.ALARM


class Store:
    """Writes parsed messages; `describe(box)` adds name/village/township to box events (regions)."""

    def __init__(self, db: Database, describe: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.db = db
        self.describe = describe
        self._stmts: dict[str, Any] = {}

    def _stmt(self, name: str, build: Callable[[], Any]) -> Any:
        """A statement built once (building one costs more than executing it for a small batch)."""
        stmt = self._stmts.get(name)
        if stmt is None:
            stmt = self._stmts[name] = build()
        return stmt

    async def write(self, items: Sequence[tuple[Incoming, Parsed]]) -> Outcome:
        out = Outcome()
        async with self.db.begin() as conn:
            await self._write(conn, items, out)
        return out

    async def quarantine_one(self, item: Incoming, reason: str) -> None:
        async with self.db.begin() as conn:
            await conn.execute(quarantine.insert(), [_quarantine_row(item, reason)])

    async def _write(self, conn: AsyncConnection, items: Sequence[tuple[Incoming, Parsed]], out: Outcome) -> None:
        db = self.db
        bad = [_quarantine_row(it, p.reason) for it, p in items if isinstance(p, Bad)]
        if bad:
            await conn.execute(quarantine.insert(), bad)
            out.quarantined = len(bad)
        states = [(it, p) for it, p in items if isinstance(p, State)]
        if states:
            await self._states(conn, states, out)
        good: dict[str, tuple[Incoming, Good]] = {}
        for it, p in items:
            if isinstance(p, Good):
                good.setdefault(p.env.id, (it, p))
        if not good:
            return
        rows = [{"id": p.env.id, "box": p.env.box, "seq": p.env.seq, "ts": p.env.ts, "class": p.env.cls.wire,
                 "kind": p.env.kind, "received": it.received, "raw": p.raw} for it, p in good.values()]
        new_ids = await db.insert_new(conn, "ingest.messages", messages, MESSAGE_COLUMNS, "id", rows)
        out.stored = len(new_ids)
        out.duplicates = sum(1 for it, p in items if isinstance(p, Good)) - len(new_ids)
        await self._boxes(conn, [(it, p.env) for it, p in good.values()], new_ids, out)
        fresh = [(it, p.env) for it, p in good.values() if p.env.id in new_ids]
        if fresh:
            await self._derived(conn, fresh, out)

    async def _box_event(self, conn: AsyncConnection, box_ids: Sequence[str], out: Outcome) -> None:
        if not box_ids:
            return
        q = select(boxes.c.id, boxes.c.state, boxes.c.state_ts, boxes.c.last_seen, boxes.c.backlog,
                   boxes.c.version).where(boxes.c.id.in_(sorted(set(box_ids))))
        for b, state, state_ts, last_seen, backlog, version in (await conn.execute(q)).all():
            row: dict[str, Any] = {"id": b, "name": None, "village": None, "township": None, "state": state,
                                   "last_seen": last_seen, "backlog": backlog, "version": version}
            if self.describe is not None:
                with contextlib.suppress(Exception):
                    row.update({k: v for k, v in self.describe(b).items() if k in ("name", "village", "township")})
            out.events.append(("box", row, ("box", b, state, state_ts, backlog, version)))

    async def _states(self, conn: AsyncConnection, states: Sequence[tuple[Incoming, State]], out: Outcome) -> None:
        newest: dict[str, tuple[Incoming, State]] = {}
        for it, s in states:
            cur = newest.get(s.box)
            if cur is None or s.ts >= cur[1].ts:
                newest[s.box] = (it, s)
        rows = [{"id": s.box, "state": s.state, "state_ts": s.ts, "version": s.version, "groups": s.groups,
                 "first_seen": it.received, "last_seen": None if it.retain else it.received}
                for it, s in sorted(newest.values(), key=lambda x: x[1].box)]
        changed: list[str] = []
        # a state without `groups` (an older agent) keeps the stored ones: two statements, as JSON None is 'null'
        for with_groups in (True, False):
            part = [r for r in rows if (r["groups"] is not None) == with_groups]
            if not part:
                continue
            if not with_groups:
                part = [{k: v for k, v in r.items() if k != "groups"} for r in part]

            def set_(ex: Any, with_groups: bool = with_groups) -> dict[str, Any]:
                values = {"state": ex.state, "state_ts": ex.state_ts,
                          "version": case((ex.version.is_(None), boxes.c.version), else_=ex.version),
                          "last_seen": case((ex.last_seen.is_(None), boxes.c.last_seen),
                                            else_=_newer_int(boxes.c.last_seen, ex.last_seen))}
                if with_groups:
                    values["groups"] = ex.groups
                return values

            def build(set_: Callable[[Any], dict[str, Any]] = set_) -> Any:
                return self.db.upsert(
                    boxes, ["id"], set_,
                    # `<=`: every instance stores (and announces) the same retained state once
                    where=lambda ex: or_(boxes.c.state_ts.is_(None), boxes.c.state_ts <= ex.state_ts),
                ).returning(boxes.c.id)

            stmt = self._stmt(f"states-{with_groups}", build)
            changed += [r[0] for r in (await conn.execute(stmt, part)).all()]
        await self._box_event(conn, changed, out)

    async def _boxes(self, conn: AsyncConnection, envs: Sequence[tuple[Incoming, Envelope]], new_ids: set[str],
                     out: Outcome) -> None:
        """Upsert each box's row; `stored`/`min_seq` count only the envelopes new to `messages` (`new_ids`,
        from RETURNING), so a resend changes neither and the seq gaps never need to scan `messages`."""
        agg: dict[str, dict[str, Any]] = {}
        heartbeats: dict[str, Envelope] = {}
        for it, env in envs:
            new = env.id in new_ids
            a = agg.get(env.box)
            if a is None:
                agg[env.box] = {"id": env.box, "first_seen": it.received, "last_seen": it.received,
                                "last_seq": env.seq, "stored": int(new), "min_seq": env.seq if new else None}
            else:
                a["first_seen"] = min(a["first_seen"], it.received)
                a["last_seen"] = max(a["last_seen"], it.received)
                a["last_seq"] = max(a["last_seq"], env.seq)
                if new:
                    a["stored"] += 1
                    a["min_seq"] = env.seq if a["min_seq"] is None else min(a["min_seq"], env.seq)
            if env.cls is MsgClass.TELEMETRY and env.kind == "heartbeat":
                hb = heartbeats.get(env.box)
                if hb is None or env.ts > hb.ts:
                    heartbeats[env.box] = env
        await self.db.write_rows(conn, "ingest.boxes", boxes, BOX_AGG_COLUMNS, [agg[b] for b in sorted(agg)],
                                 lambda ins: upsert_on(
            ins, ["id"],
            lambda ex: {"first_seen": _older_int(boxes.c.first_seen, ex.first_seen),
                        "last_seen": _newer_int(boxes.c.last_seen, ex.last_seen),
                        "last_seq": _newer_int(boxes.c.last_seq, ex.last_seq),
                        "stored": boxes.c.stored + ex.stored,
                        # a NULL (nothing new of the box) keeps the stored value: NULL < x is not true
                        "min_seq": case((ex.min_seq.is_(None), boxes.c.min_seq),
                                        else_=_older_int(boxes.c.min_seq, ex.min_seq))}))
        if heartbeats:
            hb_rows = []
            for b in sorted(heartbeats):
                env = heartbeats[b]
                hb_rows.append({"b_id": b, "b_ts": env.ts, "heartbeat": env.data, "heartbeat_ts": env.ts,
                                "backlog": backlog_of(env.data), "version": _name(env.data.get("version"))})
            if self.db.dialect == "postgresql":  # one UPDATE ... FROM unnest (Database.write_rows says why)
                for r in hb_rows:
                    r["heartbeat"] = json.dumps(r["heartbeat"])
                await self.db.execute_unnest(conn, "ingest.heartbeat", _heartbeat_update, HEARTBEAT_COLUMNS, hb_rows)
                await self._box_event(conn, sorted(heartbeats), out)
                return
            hb_stmt = self._stmt("heartbeat", lambda: (
                update(boxes)
                .where(boxes.c.id == bindparam("b_id"),
                       or_(boxes.c.heartbeat_ts.is_(None), boxes.c.heartbeat_ts < bindparam("b_ts")))
                .values(heartbeat=bindparam("heartbeat"), heartbeat_ts=bindparam("heartbeat_ts"),
                        backlog=bindparam("backlog"),
                        version=func.coalesce(bindparam("version", type_=boxes.c.version.type), boxes.c.version))))
            await conn.execute(hb_stmt, hb_rows)
            await self._box_event(conn, sorted(heartbeats), out)  # the hub drops one that changed nothing

    async def _derived(self, conn: AsyncConnection, fresh: Sequence[tuple[Incoming, Envelope]], out: Outcome) -> None:
        db = self.db
        alarm_rows: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        cams: dict[tuple[str, str], dict[str, Any]] = {}
        periods: dict[tuple[str, str, int], dict[str, Any]] = {}
        rcpts: dict[tuple[str, str], dict[str, Any]] = {}

        def position(env: Envelope, pos: Any) -> dict[str, Any] | None:
            p = position_of(env.box, _name(env.data.get("wearer")), _name(env.data.get("device")), pos, env.ts)
            if p is None:
                return None
            history.append({k: p[k] for k in ("box", "wearer", "lat", "lon", "acc_m", "ts")})
            key = (p["box"], p["wearer"])
            if key not in latest or p["ts"] > latest[key]["ts"]:
                latest[key] = p
            return p

        def camera(box: str, data: dict[str, Any], ts: int) -> None:
            cam, state = _name(data.get("camera")), data.get("state")
            if cam is None or not isinstance(state, str) or state not in CAMERA_STATES:
                return
            row = {"box": box, "camera": cam, "state": state, "reason": _text(data.get("reason")),
                   "since": _int64(data.get("since")), "updated": ts}
            key = (box, cam)
            if key not in cams or ts > cams[key]["updated"]:
                cams[key] = row

        for item, env in fresh:
            d = env.data
            if env.cls is MsgClass.ALARM and env.kind in ALARM_KINDS:
                pos = clean_pos(d.get("pos"))
                if pos is not None:
                    position(env, d.get("pos"))
                alarm_rows.append({"id": env.id, "box": env.box, "kind": env.kind, "wearer": _name(d.get("wearer")),
                                   "device": _name(d.get("device")), "ts": env.ts, "received": item.received,
                                   "pos": pos, "data": d})
            elif env.cls is MsgClass.TELEMETRY and env.kind == "position":
                position(env, d.get("pos"))
            elif env.cls is MsgClass.EVENT and env.kind == "camera":
                camera(env.box, d, env.ts)
            elif env.cls is MsgClass.TELEMETRY and env.kind == "cameras":
                t_to = _int64(d.get("to")) or env.ts
                t_from = _int64(d.get("from"))
                listed = d.get("cameras")
                for cam in listed if isinstance(listed, list) else []:
                    if not isinstance(cam, dict):
                        continue
                    name, state = _name(cam.get("camera")), cam.get("state")
                    if name is None or not isinstance(state, str) or state not in CAMERA_STATES:
                        continue
                    raw = cam.get("seconds")
                    secs = {s: v for s, v in ((s, _num(x)) for s, x in raw.items()) if s in CAMERA_STATES
                            and v is not None} if isinstance(raw, dict) else {}
                    p_from = t_from if t_from is not None else t_to
                    periods[(env.box, name, p_from)] = {"box": env.box, "camera": name, "period_from": p_from,
                                                       "period_to": t_to, "seconds": secs, "state": state}
                    camera(env.box, cam, env.ts)
            elif (r := receipt_of(env)) is not None:
                key = (r["cmd"], r["box"])
                if key not in rcpts or receipt_newer(r, rcpts[key]):
                    rcpts[key] = r

        if alarm_rows:
            res = await conn.execute(self._stmt("alarms", lambda: db.insert_ignore(alarms).returning(alarms.c.id)),
                                     alarm_rows)
            opened = {r[0] for r in res.all()}
            by_id = {envl.id: envl for _i, envl in fresh}
            for a in alarm_rows:
                if a["id"] in opened:
                    row = alarm_row(by_id[a["id"]], a["pos"])
                    out.events.append(("alarm", row, ("alarm", a["id"], "new")))
        if history:
            await db.write_rows(conn, "ingest.positions", positions, POSITION_COLUMNS, history)
        if latest:
            await db.write_rows(conn, "ingest.positions_latest", positions_latest, LATEST_COLUMNS,
                                [latest[k] for k in sorted(latest)], lambda ins: upsert_on(
                                    ins, ["box", "wearer"], ["device", "lat", "lon", "acc_m", "fix_ts", "ts"],
                                    where=lambda ex: positions_latest.c.ts < ex.ts))
        if periods:
            await conn.execute(self._stmt("camera_periods", lambda: db.insert_ignore(camera_periods)),
                               [periods[k] for k in sorted(periods)])
        if cams:
            await db.write_rows(conn, "ingest.camera_states", camera_states, CAMERA_STATE_COLUMNS,
                                [cams[k] for k in sorted(cams)], lambda ins: upsert_on(
                                    ins, ["box", "camera"], ["state", "reason", "since", "updated"],
                                    where=lambda ex: camera_states.c.updated < ex.updated))
        if rcpts:
            t = receipts.c
            got = await db.write_rows(conn, "ingest.receipts", receipts, RECEIPT_COLUMNS,
                                      [rcpts[k] for k in sorted(rcpts)], lambda ins: upsert_on(
                ins, ["cmd", "box"], ["state", "reason", "ts", "envelope"],
                where=lambda ex: or_(
                    and_(ex.ts > t.ts, not_(and_(_rank_sql(t.state) == _lit(3), _rank_sql(ex.state) < _lit(3)))),
                    and_(ex.ts == t.ts, _rank_sql(ex.state) > _rank_sql(t.state))),
            ).returning(t.cmd, t.box, t.state, t.reason, t.ts), returning=True)
            for cmd, box, state, reason, ts in got:
                out.events.append(("receipt", receipt_row(cmd, box, state, reason, ts),
                                   ("receipt", cmd, box, state, ts)))


def _heartbeat_update() -> Any:
    """PostgreSQL: each box's newest heartbeat (`HEARTBEAT_COLUMNS`, `heartbeat` as JSON text) in one UPDATE."""
    r = unnest_typed({"b_id": boxes.c.id.type, "b_ts": BigInteger(), "heartbeat": Text(), "heartbeat_ts": BigInteger(),
                      "backlog": Integer(), "version": boxes.c.version.type})
    return (update(boxes)
            .where(boxes.c.id == r.c.b_id, or_(boxes.c.heartbeat_ts.is_(None), boxes.c.heartbeat_ts < r.c.b_ts))
            .values(heartbeat=cast(r.c.heartbeat, JSON), heartbeat_ts=r.c.heartbeat_ts, backlog=r.c.backlog,
                    version=func.coalesce(r.c.version, boxes.c.version)))


def _quarantine_row(item: Incoming, reason: str) -> dict[str, Any]:
    return {"received": item.received, "topic": _text(item.topic, 1000) or "", "reason": escape(reason, 150)[:200],
            "size": len(item.payload), "raw": item.payload[:QUARANTINE_MAX_BYTES]}


# ---------------------------------------------------------------------------------------------------
# MQTT


def _tls_context(cfg: IngestConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca) if cfg.ca else None)
    if cfg.cert and cfg.key:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    return ctx


READ_CHUNK = 64 << 10
READ_BURST = 2000  # packets one loop_read may take from the buffer before paho's loop writes (acks, pings)
_PUBACK = 0x40


class _BufferedSocket:
    """paho's socket, read 64 KiB per system call.

    paho reads each packet with three or more recv calls (the command byte, the length bytes one by one,
    then the rest) after one select() per packet; at thousands of messages a second those system calls
    and the Python around them are most of paho's cost, on the GIL the store needs. This serves paho's
    small reads from one big read, and answers `pending()` (what paho asks an SSL socket for bytes it
    already holds) so paho's loop reads what is buffered without waiting in select(). Everything else
    goes to the real socket. Hand-written: paho has no buffered reader, and this is 30 lines."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(READ_CHUNK)  # BlockingIOError / SSLWantReadError pass up to paho as before
            if not data:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + n, len(self._buf))
        return self._buf[start:self._pos]

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return self.buffered() + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    """paho's client over a `_BufferedSocket`, reading every buffered packet (up to READ_BURST) per loop
    pass, and sending many PUBACKs in one write (`ack_many`)."""

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self._sock
        n = 1
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, _BufferedSocket) and sock.buffered()
               and self._sock is sock and n < READ_BURST):
            rc = super().loop_read(max_packets)
            n += 1
        return rc

    def ack_many(self, mids: Sequence[int]) -> MQTTErrorCode:
        """PUBACKs of QoS 1 messages `mids`, in that order, as one packet write (one wake-up of paho's thread
        and one send, where `ack` costs both per message). A PUBACK is 0x40, length 2, the packet id (MQTT
        3.1.1 and 5: no reason code means success). Falls back to `ack` if paho changed its internals."""
        queue = getattr(self, "_packet_queue", None)
        if queue is None or not self._manual_ack:
            for mid in mids:
                rc = self.ack(mid, 1)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        packet = b"".join(bytes((_PUBACK, 2, mid >> 8, mid & 0xFF)) for mid in mids)
        return queue(_PUBACK, packet, 0, 0)


class _Connection:
    """A paho client that reconnects (rotating through the URLs) and subscribes again at every connect."""

    def __init__(self, cfg: IngestConfig, client_id: str, subs: list[tuple[str, int]], *, persistent: bool,
                 manual_ack: bool, on_message: Callable[[mqtt.MQTTMessage, int], None],
                 receive_max: int | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.subs = subs
        self.persistent = persistent
        self.on_message_cb = on_message
        self.urls = [parse_broker_url(u) for u in cfg.urls]
        self._url_i = 0
        self.gen = 0  # bumped at every connect and disconnect: acks of another generation are not sent
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.connects = 0
        self.session_lost = 0  # connects where the broker said it had no session for us (after the first)
        self._closing = False
        proto = mqtt.MQTTv5 if cfg.protocol == 5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": proto, "manual_ack": manual_ack}
        if proto == mqtt.MQTTv311:
            kwargs["clean_session"] = not persistent
        self.client = _Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.client.max_queued_messages_set(0)  # only acks are queued by us; bounded by `inflight`
        u = self.urls[0]
        user = cfg.username if cfg.username is not None else u.username
        password = cfg.password if cfg.password is not None else u.password
        if user is not None:
            self.client.username_pw_set(user, password)
        if any(x.tls for x in self.urls):
            self.client.tls_set_context(_tls_context(cfg))
        self.receive_max = receive_max
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        from county.console import set_nodelay

        self.client.on_socket_open = set_nodelay

    def start(self) -> None:
        u = self.urls[self._url_i]
        props = None
        if self.cfg.protocol == 5:
            props = Properties(PacketTypes.CONNECT)
            if self.persistent:
                props.SessionExpiryInterval = self.cfg.session_expiry_s
            if self.receive_max is not None:
                props.ReceiveMaximum = min(self.receive_max, 65535)
        kwargs: dict[str, Any] = {"keepalive": self.cfg.keepalive_s}
        if self.cfg.protocol == 5:
            kwargs["clean_start"] = not self.persistent
            kwargs["properties"] = props
        self._props, self._kwargs = props, kwargs
        self.client.connect_async(u.host, u.port, **kwargs)
        self.client.loop_start()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("broker %s refused the connection: %s", self.urls[self._url_i].display, rc)
            return
        with self.lock:
            self.gen += 1
        self.connects += 1
        if self.connects > 1 and self.persistent and not getattr(flags, "session_present", True):
            self.session_lost += 1
            log.warning("broker %s had no session for %s: what arrived while it was away is not here",
                        self.urls[self._url_i].display, self.client_id)
        if self.cfg.protocol == 5:
            opts = [(t, SubscribeOptions(qos=q)) for t, q in self.subs]
            client.subscribe(opts)
        else:
            client.subscribe(self.subs)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        refused = [r for r in rcs if getattr(r, "is_failure", False)]
        if refused:
            log.error("broker refused %d of %d subscriptions (%s): is the shared subscription supported?",
                      len(refused), len(rcs), refused[0])
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self.lock:
            self.gen += 1
        self.subscribed.clear()
        if self._closing:
            return
        log.warning("lost connection to broker %s (%s); reconnecting", self.urls[self._url_i].display, rc)
        if len(self.urls) > 1:
            self._url_i = (self._url_i + 1) % len(self.urls)
            u = self.urls[self._url_i]
            with contextlib.suppress(Exception):
                client.connect_async(u.host, u.port, **self._kwargs)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.on_message_cb(msg, self.gen)

    def ack(self, mid: int, qos: int, gen: int) -> bool:
        with self.lock:
            if gen != self.gen:
                return False  # that connection is gone: the broker sends the message again, deduplicated
            return self.client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, items: Sequence[Incoming]) -> tuple[int, int]:
        """Acknowledge `items` (QoS 1, in arrival order) in one write; (acked, not acked: another connection)."""
        with self.lock:
            mids = [it.mid for it in items if it.gen == self.gen]
            if not mids:
                return 0, len(items)
            ok = self.client.ack_many(mids) == MQTTErrorCode.MQTT_ERR_SUCCESS
        return (len(mids), len(items) - len(mids)) if ok else (0, len(items))


class Ingest:
    """MQTT -> database, acknowledged after commit. `await start()`, then `await close()`."""

    def __init__(self, cfg: IngestConfig, db: Database, hub: EventHub | None = None, *,
                 describe: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.db = db
        self.hub = hub
        self.topics = Topics(cfg.prefix)
        self.store = Store(db, describe)
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "quarantined": 0, "batches": 0,
                      "acked": 0, "not_acked": 0, "store_errors": 0}
        self._urgent: deque[Incoming] = deque()  # alarms: the next batch takes these first, alone
        self._normal: deque[Incoming] = deque()
        self._more = asyncio.Event()  # set when either deque gets an item
        self._order: deque[Incoming] = deque()  # every held message in arrival order: acks go out in this order
        self._slots = threading.BoundedSemaphore(cfg.inflight)
        self._handoff: list[Incoming] = []  # paho's thread -> the loop, under _handoff_lock
        self._handoff_lock = threading.Lock()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.conn = _Connection(
            cfg, cfg.client_id,
            [(f"$share/{cfg.group}/{self.topics.all_up()}", 1), (self.topics.all_state(), 1)],
            persistent=True, manual_ack=True, on_message=self._on_message, receive_max=cfg.inflight)
        self.live: LiveFeed | None = LiveFeed(cfg, hub) if (hub is not None and cfg.live) else None
        self.committed = asyncio.Event()  # set after every commit (tests wait on it with a condition)
        self.workers = Workers(self) if cfg.workers > 1 else None

    def totals(self) -> dict[str, int]:
        """`stats` of this process plus those the worker processes last reported."""
        out = dict(self.stats)
        if self.workers is not None:
            for st in self.workers.stats.values():
                for k, v in st.items():
                    out[k] = out.get(k, 0) + v
        return out

    @property
    def subscribed(self) -> threading.Event:
        return self.conn.subscribed

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="county-ingest")
        if self.live is not None:
            await self.live.start()
        self.conn.start()
        if self.workers is not None:
            self.workers.start()

    async def wait_subscribed(self, within_s: float = 10.0) -> None:
        """Until the broker answered the subscriptions (the live feed's and every worker's too); TimeoutError
        after `within_s`."""
        events = [self.conn.subscribed] + ([self.live.conn.subscribed] if self.live is not None else [])
        for ev in events:
            if not await asyncio.to_thread(ev.wait, within_s):
                raise TimeoutError("ingest did not subscribe")
        if self.workers is not None:
            await self.workers.wait_ready(within_s)

    async def close(self) -> None:
        self._closing = True
        if self.workers is not None:
            await self.workers.close()
        await asyncio.to_thread(self.conn.close)
        if self.live is not None:
            await self.live.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # paho's thread
    def _on_message(self, msg: mqtt.MQTTMessage, gen: int) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "(topic not UTF-8)"
        item = Incoming(topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain), gen, int(time.time() * 1000))
        while not self._slots.acquire(timeout=0.5):  # full: paho stops reading the socket until there is room
            if self._closing:
                return
        loop = self._loop
        if loop is None or loop.is_closed():
            self._slots.release()
            return
        with self._handoff_lock:  # one wake-up of the loop per burst, not one per message
            self._handoff.append(item)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            try:
                loop.call_soon_threadsafe(self._arrived)
            except RuntimeError:  # the loop closed meanwhile: the messages stay unacknowledged
                pass

    # the event loop's thread
    def _arrived(self) -> None:
        with self._handoff_lock:
            items = list(self._handoff)
            self._handoff.clear()
            self._wake_pending = False
        live = self.live
        for item in items:
            self.stats["received"] += 1
            topic = item.topic
            alarm = "/up/alarm/" in topic  # a topic that only looks like one costs nothing but its place
            if live is not None and (alarm or "/up/receipt/" in topic):
                live.claim(topic, item.payload)  # the topics the live feed hears too
            self._order.append(item)
            (self._urgent if alarm else self._normal).append(item)
        if items:
            self._more.set()

    def _take(self, q: deque[Incoming], n: int) -> list[Incoming]:
        n = min(n, len(q))
        return [q.popleft() for _ in range(n)]

    async def _next_batch(self) -> list[Incoming]:
        """Alarms first and alone (a telemetry backlog never stands in front of one: committed, announced,
        then the telemetry goes on); otherwise up to `batch_max` messages, waiting at most `batch_ms` after
        the first for more, and not at all once an alarm arrives (it joins the batch, which is committed)."""
        loop = asyncio.get_running_loop()
        bmax = self.cfg.batch_max
        while not (self._urgent or self._normal):
            self._more.clear()
            await self._more.wait()
        if self._urgent:
            return self._take(self._urgent, bmax)
        batch = self._take(self._normal, bmax)
        deadline = loop.time() + self.cfg.batch_ms / 1000
        while len(batch) < bmax:
            if self._urgent:  # an alarm never waits for the window
                batch += self._take(self._urgent, bmax - len(batch))
                break
            if self._normal:  # what is already queued costs no waiting: a backlog still makes full batches
                batch += self._take(self._normal, bmax - len(batch))
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            self._more.clear()
            try:
                await wait_within(self._more.wait(), left)  # never wait_for: loses a stop
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._handle(batch)
            except Exception:  # a bug: say so and go on; the batch stays unacknowledged (sent again later)
                log.exception("ingest: a batch of %d could not be handled", len(batch))
                for it in batch:
                    it.done = 2
                self._send_acks()

    def _release(self, it: Incoming) -> None:
        if it.held:
            it.held = False
            self._slots.release()

    def _send_acks(self) -> None:
        """Acknowledge the committed messages at the front of the arrival order, in one write; one still
        waiting (a telemetry batch behind an alarm's) holds back the acks after it: MQTT wants PUBACKs in
        the order the PUBLISHes came (MQTT 5 section 4.6), and each still only after its own commit."""
        order, ready = self._order, []
        while order and order[0].done:
            it = order.popleft()
            if it.done == 1 and it.qos == 1:
                ready.append(it)
            elif it.done == 1 and it.qos == 2:  # not subscribed at QoS 2; acknowledged as paho would
                self.stats["acked" if self.conn.ack(it.mid, it.qos, it.gen) else "not_acked"] += 1
            self._release(it)
        if ready:
            acked, not_acked = self.conn.ack_many(ready)
            self.stats["acked"] += acked
            self.stats["not_acked"] += not_acked

    async def _handle(self, batch: list[Incoming]) -> None:
        parsed = parse_all(batch, self._parse)  # an uplink batch (issue 14) as the envelopes it carries
        try:
            outcomes = [await self.store.write(parsed)]
        except Exception as exc:  # the database, or a value it cannot take: store them one by one
            self.stats["store_errors"] += 1
            log.warning("storing a batch of %d failed (%s); storing them one by one", len(batch), escape(exc, 300))
            outcomes = [await self._one(it, p) for it, p in parsed]
        for out in outcomes:
            self.stats["stored"] += out.stored
            self.stats["duplicates"] += out.duplicates
            self.stats["quarantined"] += out.quarantined
        self.stats["batches"] += 1
        for it in batch:
            it.done = 1
        self._send_acks()
        if self.hub is not None:
            for out in outcomes:
                for kind, data, key in out.events:
                    self.hub.publish(kind, data, key=key)
        self.committed.set()
        self.committed.clear()

    def _parse(self, it: Incoming) -> Parsed:
        try:
            return parse(self.topics, it, self.cfg.max_payload)
        except Exception as exc:  # a bug in reading it: keep it in quarantine rather than stall on it
            log.exception("ingest: cannot read a message on %s", escape(it.topic, 200))
            return Bad(f"unreadable: {type(exc).__name__}")

    async def _one(self, it: Incoming, p: Parsed) -> Outcome:
        """One message in its own transaction; one the database refuses is quarantined; a database that is
        away (or locked, or a deadlock) is waited for: nothing after it is acknowledged before it."""
        while True:
            try:
                return await self.store.write([(it, p)])
            except (OperationalError, InterfaceError) as exc:  # away, locked, a deadlock: not the message's fault
                log.error("database unavailable (%s); retrying in %.0f s", escape(exc, 300), DB_RETRY_S)
                await asyncio.sleep(DB_RETRY_S)
                continue
            except Exception as exc:  # refused: this message cannot be stored as it is
                why = f"store error: {type(exc).__name__}: {escape(exc, 120)}"
            for attempt in (it, Incoming("", b"", it.mid, it.qos, it.retain, it.gen, it.received)):
                try:  # the second attempt: a bare row (no topic, no payload), in case those were refused
                    await self.store.quarantine_one(attempt, why if attempt is it else "unstorable: " + why)
                    log.warning("message on %s quarantined: %s", escape(it.topic, 200), why)
                    return Outcome(quarantined=1)
                except (OperationalError, InterfaceError) as exc:  # the database is away
                    log.error("database unavailable (%s); retrying in %.0f s", escape(exc, 300), DB_RETRY_S)
                    break
                except SQLAlchemyError:
                    continue
            await asyncio.sleep(DB_RETRY_S)


# ---------------------------------------------------------------------------------------------------
# worker processes: several ingest processes on one host behind one server


WORKER_RESTART_MAX_S = 16.0


class Workers:
    """`workers - 1` more ingest processes (`python -m county.ingest --worker`) beside this one.

    Why: one ingest process does its MQTT in paho's Python thread and its parsing and SQL in the event loop,
    on one interpreter lock; a host with more cores takes more envelopes per second with more processes.
    Each worker is an ordinary instance of the shared subscription (its own persistent session, client id
    `CLIENT_ID-wK`, so the broker splits the envelopes between them and keeps a worker's share while it
    restarts) and keeps every guarantee on its own: ack after its commit, dedupe, quarantine, the alarm
    fast path. Nothing secret is on a command line: the configuration (database URL and broker password
    included) goes as one JSON line on the worker's stdin, which then stays open: when this process ends,
    even by kill -9, the worker reads end-of-file and stops (what it had not committed stays unacknowledged,
    and the broker sends it again). Each worker's events (alarms, receipts, box changes: what this process's
    ingest would publish after its commit) come back as JSON lines on its stdout and go to this process's
    hub (box events get the regions' names here), with its stats after each commit. A worker that dies is
    started again (after 1 s, doubling to 16 s).
    """

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.n = ingest.cfg.workers - 1
        self.stats: dict[int, dict[str, int]] = {}
        self.ready: dict[int, asyncio.Event] = {}
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        for k in range(1, self.n + 1):
            self.ready[k] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._supervise(k), name=f"county-ingest-worker-{k}"))

    async def wait_ready(self, within_s: float) -> None:
        for ev in self.ready.values():
            try:
                await wait_within(ev.wait(), within_s)
            except TimeoutError:
                raise TimeoutError("an ingest worker did not subscribe") from None

    def _spec(self, k: int) -> bytes:
        cfg = self.ingest.cfg
        d: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in dataclasses_fields(cfg)}
        d.update(urls=list(cfg.urls), client_id=f"{cfg.client_id}-w{k}"[:64], workers=1, live=False,
                 ca=str(cfg.ca) if cfg.ca else None, cert=str(cfg.cert) if cfg.cert else None,
                 key=str(cfg.key) if cfg.key else None)
        url = self.ingest.db.engine.url.render_as_string(hide_password=False)
        return json.dumps({"db": url, "cfg": d}).encode() + b"\n"

    async def _supervise(self, k: int) -> None:
        delay = 1.0
        while not self._closing:
            started = time.monotonic()
            try:
                await self._run_one(k)
            except (OSError, ValueError) as exc:
                log.error("ingest worker %d: %s", k, escape(exc, 300))
            if self._closing:
                return
            self.restarts += 1
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, WORKER_RESTART_MAX_S)
            log.error("ingest worker %d ended; starting it again in %.0f s", k, delay)
            await asyncio.sleep(delay)

    async def _run_one(self, k: int) -> None:
        import sys

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "county.ingest", "--worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=1 << 22)
        self.procs[k] = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(self._spec(k))
            await proc.stdin.drain()
            while line := await proc.stdout.readline():
                self._line(k, line)
        finally:
            self.ready[k].clear()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    def _line(self, k: int, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("ingest worker %d said something that is not JSON: %s", k, escape(line, 200))
            return
        if "ready" in msg:
            self.ready[k].set()
        elif "stats" in msg:
            self.stats[k] = msg["stats"]
            self.ingest.committed.set()
            self.ingest.committed.clear()
        elif "event" in msg and self.ingest.hub is not None:
            kind, data, key = msg["event"], msg["data"], msg.get("key")
            describe = self.ingest.store.describe
            if kind == "box" and describe is not None:
                with contextlib.suppress(Exception):
                    data.update({x: v for x, v in describe(data["id"]).items() if x in ("name", "village", "township")})
            self.ingest.hub.publish(kind, data, key=tuple(key) if key is not None else None)

    async def close(self) -> None:
        self._closing = True
        for proc in self.procs.values():
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()  # end-of-file: the worker stops as on SIGTERM
        for k, proc in self.procs.items():
            try:
                await wait_within(proc.wait(), 15)
            except TimeoutError:
                log.warning("ingest worker %d did not stop within 15 s: killed", k)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


class _PipeHub:
    """A worker's hub: each event one JSON line on stdout, for the parent's hub."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def publish(self, kind: str, data: dict[str, Any], *, key: Hashable | None = None) -> bool:
        line = {"event": kind, "data": data, "key": list(key) if isinstance(key, tuple) else None}
        self.out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self.out.flush()
        return True


async def _worker_main() -> int:
    """`python -m county.ingest --worker`: the spec on stdin (Workers._spec), then ingest until stdin ends."""
    import sys

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = json.loads(await reader.readline())
    d = spec["cfg"]
    for name in ("ca", "cert", "key"):
        d[name] = Path(d[name]) if d[name] else None
    cfg = IngestConfig(**d)
    out = sys.stdout.buffer
    db = await Database.open(spec["db"], migrate=False)
    ingest = Ingest(cfg, db, _PipeHub(out))  # type: ignore[arg-type]  # publish() is all ingest asks of a hub
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: reader.feed_eof())
    try:
        await ingest.start()
        await ingest.wait_subscribed(60)
        out.write(b'{"ready":true}\n')
        out.flush()

        async def report() -> None:  # the stats when they changed, every 50 ms at most
            last: dict[str, int] = {}
            while True:
                if ingest.stats != last:
                    last = dict(ingest.stats)
                    out.write(json.dumps({"stats": last}).encode() + b"\n")
                    out.flush()
                await asyncio.sleep(0.05)

        reporter = asyncio.create_task(report())
        while await reader.read(4096):  # only its end matters: the parent closed it, or is gone
            pass
        reporter.cancel()
    finally:
        await ingest.close()
        await db.close()
    return 0


# ---------------------------------------------------------------------------------------------------
# the live feed: every instance's hub hears every alarm and receipt


def _wire_key(topic: str, payload: bytes) -> bytes:
    return hashlib.blake2b(topic.encode("utf-8", "replace") + b"\x00" + payload, digest_size=16).digest()


class LiveFeed:
    """A non-shared, non-persistent subscription to `P/box/+/up/alarm/#` and `.../up/receipt/#` that feeds
    only the hub. A copy this instance's own ingest also received (`claim`) is left to the ingest, which
    announces it after its commit; any other copy is announced from the wire after `live_hold_s` (another
    instance stores it). The hub drops the second of two copies with the same key."""

    CLAIMS = 20_000

    def __init__(self, cfg: IngestConfig, hub: EventHub | None) -> None:
        self.cfg = cfg
        self.hub = hub
        self.topics = Topics(cfg.prefix)
        p = cfg.prefix
        self.conn = _Connection(cfg, f"{cfg.client_id}-live", [(f"{p}/box/+/up/alarm/#", 1),
                                                              (f"{p}/box/+/up/receipt/#", 1)],
                                persistent=False, manual_ack=False, on_message=self._on_message)
        self._claimed: OrderedDict[bytes, None] = OrderedDict()
        self._pending: dict[bytes, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.announced = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.conn.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.conn.close)
        for h in self._pending.values():
            h.cancel()
        self._pending.clear()

    def claim(self, topic: str, payload: bytes) -> None:
        key = _wire_key(topic, payload)
        handle = self._pending.pop(key, None)
        if handle is not None:
            handle.cancel()
            return
        self._claimed[key] = None
        if len(self._claimed) > self.CLAIMS:
            self._claimed.popitem(last=False)

    def _on_message(self, msg: mqtt.MQTTMessage, gen: int) -> None:  # paho's thread
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._arrived, msg.topic, bytes(msg.payload))

    def _arrived(self, topic: str, payload: bytes) -> None:
        key = _wire_key(topic, payload)
        if self._claimed.pop(key, 0) is None:
            return  # our own ingest has it
        if key in self._pending or self._loop is None:
            return
        self._pending[key] = self._loop.call_later(self.cfg.live_hold_s, self._announce, key, topic, payload)

    def _announce(self, key: bytes, topic: str, payload: bytes) -> None:
        self._pending.pop(key, None)
        if self.hub is None:
            return
        p = parse(self.topics, Incoming(topic, payload, 0, 0, False, 0, 0), self.cfg.max_payload)
        if not isinstance(p, Good):
            return
        env = p.env
        if env.cls is MsgClass.ALARM and env.kind in ALARM_KINDS:
            row = alarm_row(env, clean_pos(env.data.get("pos")))
            if self.hub.publish("alarm", row, key=("alarm", env.id, "new")):
                self.announced += 1
        elif (r := receipt_of(env)) is not None:
            row = receipt_row(r["cmd"], r["box"], r["state"], r["reason"], r["ts"])
            if self.hub.publish("receipt", row, key=("receipt", r["cmd"], r["box"], r["state"], r["ts"])):
                self.announced += 1


# ---------------------------------------------------------------------------------------------------
# `python -m county.ingest`: ingest alone (the server runs it in its own process; this is for tests and
# for operators who want a dedicated ingest process)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m county.ingest", description="MQTT ingest into the county database")
    ap.add_argument("--db", required=True, help="sqlite:///PATH or postgresql://...")
    ap.add_argument("--broker", required=True, action="append", help="mqtt://host:port (repeat for a list)")
    ap.add_argument("--client-id", required=True, help="stable per instance (the broker keeps its session)")
    ap.add_argument("--workers", type=int, default=1, help="ingest processes, this one included (default 1)")
    ap.add_argument("--group", default=DEFAULT_GROUP)
    ap.add_argument("--prefix", default=DEFAULT_PREFIX)
    ap.add_argument("--batch-max", type=int, default=500)
    ap.add_argument("--batch-ms", type=float, default=50.0)
    return ap.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    db = await Database.open(args.db)
    cfg = IngestConfig(urls=args.broker, client_id=args.client_id, group=args.group, prefix=args.prefix,
                       batch_max=args.batch_max, batch_ms=args.batch_ms, live=False, workers=args.workers)
    ingest = Ingest(cfg, db)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await ingest.start()
    await ingest.wait_subscribed(30)
    print("READY", flush=True)
    await stop.wait()
    await ingest.close()
    await db.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if list(sys.argv[1:] if argv is None else argv) == ["--worker"]:  # started by Workers: spec on stdin
        return asyncio.run(_worker_main())
    return asyncio.run(_main(_parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
