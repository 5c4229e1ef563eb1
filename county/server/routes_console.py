"""What the web console's overview, boxes, cameras, users and audit pages read and change (county/web/).

GET /api/v1/overview (boxes.read): the region tree inside the caller's scope with one health line per
village and totals per township and for the whole view:
    {"now", "county": {id, name}, "counts": {...}, "townships": [{id, name, counts, villages: [
        {id, name, counts, boxes: [{id, name, state, last_seen, backlog}]}]}], "unregistered": {...} | null}
`counts` = {boxes, boxes_online, last_seen (newest), backlog (sum), cameras, cameras_online,
camera_samples, camera_samples_online, camera_rate_today (point in time, county/reports.py's definition:
the samples of today in the county's timezone that were online over those in a known state; null without
any; aggregated by the database, so it stays fast with a day of periods of every camera), wearers (wearers
whose latest position is at most REPORTING_MS old), alarms_open (not resolved)}. Unregistered boxes (not
in the regions file) appear, for a county-wide user only, under `unregistered`.

GET /api/v1/fleet (boxes.read): /api/v1/boxes plus what the last heartbeat told: `clock` ({plausible,
synchronised, offset_s, reason} or null), `outbox_depth` and `outbox_counters` (per class / counter name),
`uptime_s`, `disk_free_mb`, `heartbeat_ts`.

GET /api/v1/boxes/{id} (boxes.read; the box inside the scope): the box as in /fleet, plus `first_seen`,
`cameras` (current states) and, with
messages.read, `timeline`: its last TIMELINE envelopes newest first `{seq, ts, received, class, kind,
data}` (data: a few fields of small envelopes, never the raw alarm frame).

GET /api/v1/cameras (reports.read): the current state of every camera of a box inside the scope
`[{box, box_name, village, village_name, township, township_name, camera, state, reason, since, updated}]`.

GET /api/v1/reports/cameras/sheet?period=day|month&date=...&region=ID&format=xlsx|csv&lang=zh_CN|en
(reports.read): the camera report (the same figures as /api/v1/reports/cameras) laid out as a county
assessment sheet, 在线率 by township with subtotals (county/web/assessment.py); a download.

GET /api/v1/users (users.read), POST /api/v1/users, PATCH /api/v1/users/{name} (user.manage): user
management. A password is set by an admin here (at least 8 characters) and stored as argon2id only; it is
never echoed, logged or audited. Changing a user's role, scope, password or disabling them ends their
sessions. An admin cannot disable themselves or change their own role (409): the county keeps an admin.
A scoped admin manages only users inside their scope. Every change is audited (user.add, user.update).

GET /api/v1/audit (audit.read): the audit log newest first, filtered by `actor`, `action` (exact or a
prefix ending in "."), `target`, `from`/`to` (epoch ms), paged with `before` (a seq) and `limit` (default
100, at most 1000): `{"rows": [{seq, ts, actor, action, target, detail}], "next_before"}`.
GET /api/v1/audit/check (audit.read): the chain check (county/server/audit.py verify) `{"ok", "rows",
"head_seq", "head_hash", "broken": {seq, problem, kind} | null}` (kind: edited, deleted, unchained,
head_changed, head_missing or other).
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections import defaultdict
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.protocol.topics import BOX_ID_RE
from county import reports
from county.server import audit as audit_log
from county.server import auth
from county.server.routes_boxes import box_json, visible_boxes
from county.server.routes_common import ApiError, api, audit_append, authorize, in_scope, int_param, parts, read_json
from county.server.users import UserError, check_name, check_password, check_role, check_scope, check_text
from county.store.queries import seq_gaps
from county.store.tables import alarms as alarms_t
from county.store.tables import audit as audit_t
from county.store.tables import boxes as boxes_t
from county.store.tables import camera_periods as camera_periods_t
from county.store.tables import camera_states as cameras_t
from county.store.tables import messages as messages_t
from county.store.tables import positions_latest as positions_t
from county.store.tables import sessions as sessions_t
from county.store.tables import users as users_t

REPORTING_MS = 3_600_000   # a wearer whose latest position is at most this old is "reporting"
TIMELINE = 50
AUDIT_DEFAULT_LIMIT = 100
AUDIT_MAX_LIMIT = 1000
SMALL_ENVELOPE = 4096      # the timeline shows data fields of envelopes up to this size
TIMELINE_FIELDS = ("state", "camera", "reason", "cmd", "kind", "wearer", "uptime_s", "version", "summary")


def _zero() -> dict[str, Any]:
    return {"boxes": 0, "boxes_online": 0, "last_seen": None, "backlog": 0, "cameras": 0, "cameras_online": 0,
            "camera_samples": 0, "camera_samples_online": 0, "camera_rate_today": None, "wearers": 0,
            "alarms_open": 0}


def _rated(c: dict[str, Any]) -> dict[str, Any]:
    """camera_rate_today from the samples: online / known, None without any."""
    known = c["camera_samples"]
    c["camera_rate_today"] = round(c["camera_samples_online"] / known, 4) if known else None
    return c


def _add(into: dict[str, Any], part: dict[str, Any]) -> None:
    for k in ("boxes", "boxes_online", "backlog", "cameras", "cameras_online", "camera_samples",
              "camera_samples_online", "wearers", "alarms_open"):
        into[k] += part[k]
    if part["last_seen"] is not None and (into["last_seen"] is None or part["last_seen"] > into["last_seen"]):
        into["last_seen"] = part["last_seen"]


# ------------------------------------------------------------------------------------------- overview
@api
async def overview(request: Request) -> Response:
    user = authorize(request, "boxes.read")
    p = parts(request)
    regions = p.regions
    now = p.now_ms()
    tz = p.config.county.timezone
    async with p.db.connect() as conn:
        box_rows = {r.id: r for r in (await conn.execute(
            select(boxes_t.c.id, boxes_t.c.state, boxes_t.c.last_seen, boxes_t.c.backlog))).all()}
        cams: dict[str, list[str]] = defaultdict(list)
        for box, state in (await conn.execute(select(cameras_t.c.box, cameras_t.c.state))).all():
            cams[box].append(state)
        wearers = dict((await conn.execute(
            select(positions_t.c.box, func.count()).where(positions_t.c.ts >= now - REPORTING_MS)
            .group_by(positions_t.c.box))).all())
        open_alarms = dict((await conn.execute(
            select(alarms_t.c.box, func.count()).where(alarms_t.c.state != "resolved")
            .group_by(alarms_t.c.box))).all())
        # today's point-in-time camera samples per box (county/reports.py's definition), aggregated by the
        # database: the time-weighted rate needs every period's seconds in Python (the cameras page has it)
        today = reports.bucket("day", dt.datetime.fromtimestamp(now / 1000, tz=zoneinfo.ZoneInfo(tz)).date(), tz)
        cp = camera_periods_t.c
        samples: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # box -> [online, known]
        for box, state, n in (await conn.execute(
                select(cp.box, cp.state, func.count())
                .where(cp.period_to >= today.start_ms, cp.period_to < today.end_ms, cp.state.in_(reports.KNOWN))
                .group_by(cp.box, cp.state))).all():
            samples[box][1] += int(n)
            if state == "online":
                samples[box][0] += int(n)

    def box_line(box: str) -> dict[str, Any]:
        row = box_rows.get(box)
        name = regions.place(box).name if regions is not None and regions.place(box).registered else None
        return {"id": box, "name": name or box, "state": row.state if row is not None else "unknown",
                "last_seen": row.last_seen if row is not None else None,
                "backlog": row.backlog if row is not None else None}

    def counts_of(ids: list[str]) -> dict[str, Any]:
        c = _zero()
        for b in ids:
            row = box_rows.get(b)
            c["boxes"] += 1
            if row is not None:
                c["boxes_online"] += row.state == "online"
                c["backlog"] += row.backlog or 0
                if row.last_seen is not None and (c["last_seen"] is None or row.last_seen > c["last_seen"]):
                    c["last_seen"] = row.last_seen
            c["cameras"] += len(cams.get(b, ()))
            c["cameras_online"] += sum(1 for s in cams.get(b, ()) if s == "online")
            if b in samples:
                c["camera_samples_online"] += samples[b][0]
                c["camera_samples"] += samples[b][1]
            c["wearers"] += int(wearers.get(b, 0))
            c["alarms_open"] += int(open_alarms.get(b, 0))
        return c

    total = _zero()
    townships = []
    if regions is not None and regions.data is not None:
        for t in regions.data.townships:
            villages = []
            t_counts = _zero()
            for v in t.villages:
                if not regions.region_within(v.id, user.scope):
                    continue
                ids = [b.id for b in v.boxes]
                vc = _rated(counts_of(ids))
                _add(t_counts, vc)
                villages.append({"id": v.id, "name": v.name, "counts": vc, "boxes": [box_line(b) for b in ids]})
            if not villages:
                continue
            _rated(t_counts)
            _add(total, t_counts)
            townships.append({"id": t.id, "name": t.name, "counts": t_counts, "villages": villages})
    unregistered = None
    if user.scope is None:
        registered = regions.registered() if regions is not None else frozenset()
        stray = sorted(b for b in set(box_rows) | set(cams) if b not in registered)
        if stray:
            uc = _rated(counts_of(stray))
            _add(total, uc)
            unregistered = {"counts": uc, "boxes": [box_line(b) for b in stray]}
    _rated(total)
    county = {"id": regions.county_id if regions is not None else None,
              "name": regions.county_name if regions is not None else ""}
    return JSONResponse({"now": now, "timezone": tz, "county": county, "scope": user.scope, "counts": total,
                         "townships": townships, "unregistered": unregistered})


# ------------------------------------------------------------------------------------------- fleet
def heartbeat_view(heartbeat: Any) -> dict[str, Any]:
    """The parts of a box's last heartbeat the boxes list shows (absent parts None)."""
    hb: dict[str, Any] = heartbeat if isinstance(heartbeat, dict) else {}
    raw_outbox = hb.get("outbox")
    outbox: dict[str, Any] = raw_outbox if isinstance(raw_outbox, dict) else {}
    clock = hb.get("clock") if isinstance(hb.get("clock"), dict) else None
    counters = outbox.get("counters") if isinstance(outbox.get("counters"), dict) else None
    depth = outbox.get("depth") if isinstance(outbox.get("depth"), dict) else None
    return {"clock": clock, "outbox_depth": depth, "outbox_counters": counters,
            "uptime_s": hb.get("uptime_s"), "disk_free_mb": hb.get("disk_free_mb")}


@api
async def fleet(request: Request) -> Response:
    regions = parts(request).regions
    return JSONResponse([box_json(regions, b, row, missing)
                         | heartbeat_view(row["heartbeat"] if row is not None else None)
                         | {"heartbeat_ts": row["heartbeat_ts"] if row is not None else None}
                         for b, row, missing in await visible_boxes(request)])


# ------------------------------------------------------------------------------------------- one box
def _timeline_item(seq: int, ts: int, received: int, cls: str, kind: str, raw: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if cls != "alarm" and len(raw) <= SMALL_ENVELOPE:
        try:
            body = json.loads(raw).get("data")
        except (ValueError, AttributeError):
            body = None
        if isinstance(body, dict):
            data = {k: body[k] for k in TIMELINE_FIELDS if k in body and isinstance(body[k], (str, int, float))}
    return {"seq": seq, "ts": ts, "received": received, "class": cls, "kind": kind, "data": data}


@api
async def one_box(request: Request) -> Response:
    user = authorize(request, "boxes.read")
    box = request.path_params["id"]
    if not BOX_ID_RE.fullmatch(box):
        raise ApiError(400, "a box id is [A-Za-z0-9_-]{1,64}")
    p = parts(request)
    if not in_scope(p.regions, user.scope, box):
        raise ApiError(403, "that box is outside your scope")
    async with p.db.connect() as conn:
        row = (await conn.execute(select(boxes_t).where(boxes_t.c.id == box))).mappings().first()
        registered = p.regions is not None and p.regions.box(box) is not None
        if row is None and not registered:
            raise ApiError(404, f"no box {box}")
        gaps = await seq_gaps(conn, box)
        cams = [dict(r) for r in (await conn.execute(
            select(cameras_t.c.camera, cameras_t.c.state, cameras_t.c.reason, cameras_t.c.since, cameras_t.c.updated)
            .where(cameras_t.c.box == box).order_by(cameras_t.c.camera))).mappings()]
        timeline = None
        if auth.allowed(user, "messages.read"):
            m = messages_t.c
            rows = (await conn.execute(select(m.seq, m.ts, m.received, m["class"], m.kind, m.raw)
                                       .where(m.box == box).order_by(m.seq.desc()).limit(TIMELINE))).all()
            timeline = [_timeline_item(*r) for r in rows]
    body = box_json(p.regions, box, row, gaps[0].missing if gaps else None)
    body |= {"first_seen": row["first_seen"] if row is not None else None,
             **heartbeat_view(row["heartbeat"] if row is not None else None),
             "heartbeat_ts": row["heartbeat_ts"] if row is not None else None,
             "cameras": cams, "timeline": timeline}
    return JSONResponse(body)


# ------------------------------------------------------------------------------------------- cameras
@api
async def cameras(request: Request) -> Response:
    user = authorize(request, "reports.read")
    p = parts(request)
    c = cameras_t.c
    async with p.db.connect() as conn:
        rows = (await conn.execute(select(c.box, c.camera, c.state, c.reason, c.since, c.updated)
                                   .order_by(c.box, c.camera))).mappings().all()
    out = []
    for r in rows:
        if not in_scope(p.regions, user.scope, r["box"]):
            continue
        pl = p.regions.place(r["box"]) if p.regions is not None else None
        registered = pl is not None and pl.registered
        out.append({"box": r["box"], "box_name": pl.name if pl is not None and registered else None,
                    "village": pl.village if pl else None, "village_name": pl.village_name if pl else None,
                    "township": pl.township if pl else None, "township_name": pl.township_name if pl else None,
                    "camera": r["camera"], "state": r["state"], "reason": r["reason"], "since": r["since"],
                    "updated": r["updated"]})
    return JSONResponse(out)


@api
async def camera_sheet(request: Request) -> Response:
    """The camera report as a county assessment sheet (county/web/assessment.py), XLSX (default) or CSV."""
    from county.web import assessment, i18n

    q = request.query_params
    fmt = q.get("format") or "xlsx"
    if fmt not in ("xlsx", "csv"):
        raise ApiError(400, "format must be xlsx or csv")
    p = parts(request)
    region = q.get("region") or None
    if region is not None and (p.regions is None or not p.regions.has_scope(region)):
        raise ApiError(400, "region must be the county's, a township's or a village's id from the regions file")
    user = authorize(request, "reports.read", region)
    locale = i18n.normalize(q.get("lang") or request.cookies.get(i18n.LANG_COOKIE))
    tz = p.config.county.timezone
    now = p.now_ms()
    period = q.get("period") or "day"
    try:
        day = reports.parse_date(q.get("date"), period, tz, now)
        report = await reports.camera_report(p.db, p.regions, period, day, tz, region or user.scope)
    except reports.ReportError as exc:
        raise ApiError(400, str(exc)) from None
    county = p.regions.county_name if p.regions is not None else ""
    make = assessment.to_xlsx if fmt == "xlsx" else assessment.to_csv
    body = make(report, county, locale, now)
    media = ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" if fmt == "xlsx"
             else "text/csv; charset=utf-8")
    name = f"camera-assessment-{report.bucket.period}-{report.bucket.label}.{fmt}"
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


# ------------------------------------------------------------------------------------------- users
def _user_json(r: Any) -> dict[str, Any]:
    return {"name": r["name"], "role": r["role"], "scope": r["scope"], "display_name": r["display_name"],
            "phone": r["phone"], "disabled": bool(r["disabled"]), "created_at": r["created_at"]}


def _scope_ok(p: Any, actor: auth.User, scope: str | None) -> None:
    """A scoped admin may only manage users inside their own scope."""
    region = scope if scope is not None else (p.regions.county_id if p.regions is not None else None)
    if actor.scope is not None and not auth.allowed(actor, "user.manage", region, p.regions):
        raise ApiError(403, "that scope is outside yours")


@api
async def list_users(request: Request) -> Response:
    actor = authorize(request, "users.read")
    p = parts(request)
    async with p.db.connect() as conn:
        rows = (await conn.execute(select(users_t).order_by(users_t.c.name))).mappings().all()
    out = [_user_json(r) for r in rows
           if actor.scope is None or (r["scope"] is not None
                                      and p.regions is not None and p.regions.region_within(r["scope"], actor.scope))]
    return JSONResponse(out)


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _text_field(body: dict[str, Any], key: str, most: int) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string")
    try:
        return check_text(key, value, most)
    except UserError as exc:
        raise ApiError(400, str(exc)) from None


def _scope_field(p: Any, body: dict[str, Any]) -> str | None:
    scope = body.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise ApiError(400, "scope must be a township or village id, or null for the whole county")
    try:
        return check_scope(scope or None, p.regions)
    except UserError as exc:
        raise ApiError(400, str(exc)) from None


@api
async def add_user(request: Request) -> Response:
    actor = authorize(request, "user.manage")
    p = parts(request)
    body = await read_json(request)
    extra = set(body) - {"name", "role", "scope", "display_name", "phone", "password"}
    if extra:
        raise ApiError(400, f"unknown fields: {', '.join(sorted(extra))}")
    try:
        name = check_name(_str(body, "name"))
        role = check_role(_str(body, "role"))
        password = check_password(_str(body, "password"))
    except UserError as exc:
        raise ApiError(400, str(exc)) from None
    scope = _scope_field(p, body)
    _scope_ok(p, actor, scope)
    display, phone = _text_field(body, "display_name", 100), _text_field(body, "phone", 32)
    hashed = await _hash(password)
    now = p.now_ms()
    async with p.db.begin() as conn:
        if (await conn.execute(select(users_t.c.name).where(users_t.c.name == name))).first() is not None:
            raise ApiError(409, f"user {name} exists")
        await conn.execute(insert(users_t), {"name": name, "role": role, "scope": scope, "password_hash": hashed,
                                             "display_name": display, "phone": phone, "disabled": False,
                                             "created_at": now})
        await audit_append(conn, actor.name, "user.add", name,
                           {"role": role, "scope": scope, "display_name": display, "phone": phone})
        row = (await conn.execute(select(users_t).where(users_t.c.name == name))).mappings().one()
    return JSONResponse(_user_json(row), status_code=201)


async def _hash(password: str) -> str:
    import asyncio

    return await asyncio.to_thread(auth.hash_password, password)


@api
async def change_user(request: Request) -> Response:
    actor = authorize(request, "user.manage")
    p = parts(request)
    name = request.path_params["name"]
    body = await read_json(request)
    extra = set(body) - {"role", "scope", "display_name", "phone", "password", "disabled"}
    if extra or not body:
        raise ApiError(400, f"unknown fields: {', '.join(sorted(extra))}" if extra else
                       "nothing to change: role, scope, display_name, phone, password or disabled")
    values: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    if "role" in body:
        try:
            values["role"] = check_role(body["role"] if isinstance(body["role"], str) else "")
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
    if "scope" in body:
        values["scope"] = _scope_field(p, body)
        _scope_ok(p, actor, values["scope"])
    for key, most in (("display_name", 100), ("phone", 32)):
        if key in body:
            values[key] = _text_field(body, key, most)
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise ApiError(400, "disabled must be true or false")
        values["disabled"] = body["disabled"]
    if "password" in body:
        try:
            password = check_password(body["password"] if isinstance(body["password"], str) else "")
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        values["password_hash"] = await _hash(password)
        detail["password"] = "changed"  # the fact only
    if name == actor.name and (values.get("disabled") is True or ("role" in values and values["role"] != actor.role)):
        raise ApiError(409, "you cannot disable yourself or change your own role (another admin can)")
    async with p.db.begin() as conn:
        row = (await conn.execute(select(users_t).where(users_t.c.name == name))).mappings().first()
        if row is None:
            raise ApiError(404, f"no user {name}")
        _scope_ok(p, actor, row["scope"])
        await conn.execute(update(users_t).where(users_t.c.name == name).values(**values))
        ends = any(k in values for k in ("role", "scope", "password_hash")) or values.get("disabled") is True
        if ends:
            await conn.execute(delete(sessions_t).where(sessions_t.c.user == name))
        detail |= {k: v for k, v in values.items() if k != "password_hash"} | {"sessions_ended": ends}
        await audit_append(conn, actor.name, "user.update", name, detail)
        row = (await conn.execute(select(users_t).where(users_t.c.name == name))).mappings().one()
    return JSONResponse(_user_json(row))


# ------------------------------------------------------------------------------------------- audit
@api
async def audit_list(request: Request) -> Response:
    authorize(request, "audit.read")
    p = parts(request)
    q = request.query_params
    limit = int_param(request, "limit", AUDIT_DEFAULT_LIMIT, lo=1, hi=AUDIT_MAX_LIMIT)
    before = int_param(request, "before", None, lo=1)
    since = int_param(request, "from", None, lo=0)
    until = int_param(request, "to", None, lo=0)
    a = audit_t.c
    stmt = select(a.seq, a.ts, a.actor, a.action, a.target, a.detail).order_by(a.seq.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(a.seq < before)
    if since is not None:
        stmt = stmt.where(a.ts >= since)
    if until is not None:
        stmt = stmt.where(a.ts < until)
    if q.get("actor"):
        stmt = stmt.where(a.actor == q["actor"][:64])
    if q.get("target"):
        stmt = stmt.where(a.target == q["target"][:500])
    action = q.get("action")
    if action:
        stmt = stmt.where(a.action.startswith(action[:32], autoescape=True) if action.endswith(".")
                          else a.action == action[:32])
    async with p.db.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    out = []
    for r in rows:
        try:
            detail = json.loads(r.detail)
        except ValueError:
            detail = r.detail
        out.append({"seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action, "target": r.target,
                    "detail": detail})
    return JSONResponse({"rows": out, "next_before": out[-1]["seq"] if len(out) == limit else None})


@api
async def audit_check(request: Request) -> Response:
    authorize(request, "audit.read")
    p = parts(request)
    report = await audit_log.verify(p.db)
    broken = report.broken
    return JSONResponse({"ok": broken is None, "rows": report.rows, "head_seq": report.head_seq,
                         "head_hash": report.head_hash,
                         "broken": {"seq": broken.seq, "problem": broken.problem,
                                    "kind": _broken_kind(broken.problem)} if broken else None})


def _broken_kind(problem: str) -> str:
    """audit.verify's problem sentence as a code the page puts in words: edited | deleted | unchained |
    head_changed | head_missing (| other)."""
    for kind, words in (("edited", "do not match its hash"), ("deleted", "missing (deleted)"),
                        ("unchained", "does not chain"), ("head_changed", "the recorded head says"),
                        ("head_missing", "the recorded head row is missing")):
        if words in problem:
            return kind
    return "other"


def routes() -> list[Route]:
    return [
        Route("/api/v1/overview", overview, methods=["GET"]),
        Route("/api/v1/fleet", fleet, methods=["GET"]),
        Route("/api/v1/boxes/{id}", one_box, methods=["GET"]),
        Route("/api/v1/cameras", cameras, methods=["GET"]),
        Route("/api/v1/reports/cameras/sheet", camera_sheet, methods=["GET"]),
        Route("/api/v1/users", list_users, methods=["GET"]),
        Route("/api/v1/users", add_user, methods=["POST"]),
        Route("/api/v1/users/{name}", change_user, methods=["PATCH"]),
        Route("/api/v1/audit", audit_list, methods=["GET"]),
        Route("/api/v1/audit/check", audit_check, methods=["GET"]),
    ]
