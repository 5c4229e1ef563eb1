"""Broadcasts through the server: create, review (approve), cancel, resend, and the per-box receipt board.

POST /api/v1/broadcasts takes the push command's options as JSON and builds the command with the console's
own builders (county/push.py: `play_data`, `parse_time`, `command`), so a broadcast from the API and one from
`village county push` cannot differ. Targets are resolved to boxes with the regions file and the groups the
boxes reported (`boxes.groups`); a user may target only boxes inside their scope (a group reaching any box
outside it is refused: 403, audited); a target that no known box answers to is refused (422) unless
`"force": true`, and a broadcast that would reach no box at all is always refused.

The command is signed with the county key ([signing] key/kid; the key is read once, never returned) and
published QoS 1, not retained, to each target's cmd topic (the box's or the group's) by the server's
Publisher; the token is stored for resend. States: `publishing` (stored, not yet on the broker) -> `sent`,
or `publish_failed` (the broker did not take it: resend publishes it again); `awaiting_review` -> (approve)
-> `sent`; any of those -> `cancelled`. With `[review] daily = true` (or `drill`) such a broadcast is stored
unsigned as `awaiting_review` and signed (iat = approval time, same lifetime) only when a different user
approves it; an emergency is never held.

Every action (create, refused, approve, cancel, resend) is appended to the audit log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import uuid
from typing import Any

from sqlalchemy import select, update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from county import push
from county.server.routes_common import (
    ApiError,
    Parts,
    api,
    audit_append,
    authorize,
    in_scope,
    int_param,
    outside_scope,
    parse_targets,
    parts,
    place,
    publish_all,
    reach_boxes,
    reaching,
    read_json,
    signing_key,
    topics_of,
)
from county.store.tables import broadcasts as broadcasts_t
from county.store.tables import messages as messages_t
from county.store.tables import receipts as receipts_t

log = logging.getLogger("county.broadcasts")

NO_ANSWER = "no_answer"
LIVE = ("publishing", "sent", "publish_failed")  # signed, possibly on the broker
AUDIO_MIMES = frozenset(push.AUDIO_MIME.values())
MAX_TEXT_CHARS = 2000
MAX_TITLE_CHARS = 200
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
BODY_KEYS = frozenset({"to", "text", "audio_b64", "audio_mime", "class", "level", "start", "end", "volume", "title",
                       "ttl_s", "force", "repeat"})


# ------------------------------------------------------------------------------------------- helpers
def _opt_str(body: dict[str, Any], key: str, most: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > most:
        raise ApiError(400, f"{key} must be a string of at most {most} characters")
    return value


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer")
    return value


def _audio(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bytes | None]:
    b64, mime = body.get("audio_b64"), body.get("audio_mime")
    if b64 is None and mime is None:
        return None, None
    if not isinstance(b64, str) or not isinstance(mime, str):
        raise ApiError(400, "audio_b64 and audio_mime go together (both strings)")
    if mime not in AUDIO_MIMES:
        raise ApiError(400, f"audio_mime must be one of {', '.join(sorted(AUDIO_MIMES))}")
    if len(b64) > (push.MAX_AUDIO_BYTES * 4) // 3 + 4:
        raise ApiError(413, f"audio is over the {push.MAX_AUDIO_BYTES} byte limit for inline audio")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "audio_b64 is not base64") from None
    if not raw:
        raise ApiError(400, "audio is empty")
    if len(raw) > push.MAX_AUDIO_BYTES:
        raise ApiError(413, f"audio is {len(raw)} bytes, over the {push.MAX_AUDIO_BYTES} byte limit")
    return {"mime": mime, "sha256": hashlib.sha256(raw).hexdigest(), "b64": base64.b64encode(raw).decode()}, raw


def _time(body: dict[str, Any], key: str, now: float, tz: Any) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be an ISO 8601 time (no offset = the county's timezone)")
    try:
        return push.parse_time(value, now, tz)
    except push.UsageError as exc:
        raise ApiError(400, f"{key}: {exc}") from None


def _repeat(body: dict[str, Any], cls: str, tz: Any) -> dict[str, Any] | None:
    """`repeat` (docs/broadcast.md) checked by the box's own parser, so what the server signs the box takes;
    `tz` defaults to the county's timezone, written into the rule so the boxes need not agree on theirs."""
    raw = body.get("repeat")
    if raw is None:
        return None
    from agent.broadcast.items import BadBroadcast, parse_repeat

    if cls == "emergency":
        raise ApiError(400, "an emergency does not repeat")
    zone_name = getattr(tz, "key", None) or push.DEFAULT_TZ
    if isinstance(raw, dict) and "tz" not in raw:
        raw = {**raw, "tz": zone_name}
    try:
        parse_repeat(raw, zone_name)
    except BadBroadcast as exc:
        raise ApiError(400, f"repeat: {exc.detail}") from None
    return dict(raw)


def parse_body(body: dict[str, Any], now: float, tz: Any) -> tuple[dict[str, Any], list[str], int, bytes | None]:
    """(play data, targets, ttl s, raw audio) from the request body; ApiError 400 on a bad value."""
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown[:8])}")
    targets = parse_targets(body.get("to"))
    cls = body.get("class", "daily")
    if not isinstance(cls, str):
        raise ApiError(400, "class must be emergency, daily or drill")
    audio, raw = _audio(body)
    ttl = _opt_int(body, "ttl_s")
    try:
        data = push.play_data(cls=cls, level=_opt_int(body, "level"), title=_opt_str(body, "title", MAX_TITLE_CHARS),
                              text=_opt_str(body, "text", MAX_TEXT_CHARS), audio=audio,
                              start=_time(body, "start", now, tz), end=_time(body, "end", now, tz),
                              volume=_opt_int(body, "volume"))
    except push.UsageError as exc:
        raise ApiError(400, str(exc).replace("--until", "end").replace("--at", "start")
                       .replace("give --text, --audio or --cap", "give text or audio_b64")) from None
    if ttl is not None and not 0 < ttl <= push.MAX_TTL_S:
        raise ApiError(400, f"ttl_s must be 1..{push.MAX_TTL_S}")
    repeat = _repeat(body, data["class"], tz)
    if repeat is not None:
        data["repeat"] = repeat
    return data, targets, ttl or push.DEFAULT_TTL_S, raw


def check_times(data: dict[str, Any], now: float, tz: Any) -> None:
    """A start or end already past is refused (as the console does without --force): 422."""
    for key in ("start", "end"):
        ts = data.get(key)
        if ts is None:
            continue
        if (ts < int(now)) if key == "start" else (ts <= now):
            raise ApiError(422, f"{key} is {push.describe_time(ts, tz)}, {push.describe_span(now - ts)} ago; "
                           "nothing sent (force: true sends it anyway)", reason=f"{key}_past")


def _needs_review(p: Parts, cls: str) -> bool:
    review = p.config.review
    return (cls == "daily" and bool(review.daily)) or (cls == "drill" and bool(getattr(review, "drill", False)))


async def _sign_and_send(p: Parts, request: Request, row: Any, *, now: float) -> tuple[str, str | None]:
    """Sign the stored broadcast (iat = now), store the token, publish; (new state, publish error)."""
    key, kid = await signing_key(request)
    ttl = int(row["exp"] - row["created_at"] // 1000) if row["exp"] else push.DEFAULT_TTL_S
    ttl = max(1, min(ttl, push.MAX_TTL_S))
    audio = None
    if row["audio"] is not None:
        audio = {"mime": row["audio_mime"], "sha256": row["audio_sha256"],
                 "b64": base64.b64encode(row["audio"]).decode()}
    data = {"class": row["class"], "level": row["level"], "title": row["title"], "text": row["text"] or "",
            "audio": audio, "start": row["start"], "end": row["end"], "volume": row["volume"]}
    if row.get("repeat"):
        data["repeat"] = row["repeat"]
    payload = push.command("broadcast.play", data, list(row["targets"]), now=now, ttl_s=ttl, cmd_id=row["id"])
    try:
        token = push.sign(payload, key, kid)
    except push.PushError as exc:
        raise ApiError(422, str(exc)) from None
    async with p.db.begin() as conn:
        await conn.execute(update(broadcasts_t).where(broadcasts_t.c.id == row["id"])
                           .values(token=token.decode("ascii"), exp=payload["exp"], state="publishing"))
    t = topics_of(p)
    failure = await publish_all(p, token, [push.target_topic(x, t) for x in payload["to"]])
    state = "sent" if failure is None else "publish_failed"
    async with p.db.begin() as conn:
        await conn.execute(update(broadcasts_t).where(broadcasts_t.c.id == row["id"],
                                                      broadcasts_t.c.state == "publishing").values(state=state))
    return state, failure


async def _load(conn: Any, bid: str) -> Any:
    return (await conn.execute(select(broadcasts_t).where(broadcasts_t.c.id == bid))).mappings().first()


async def _load_for(p: Any, user: Any, bid: str) -> Any:
    """The broadcast a write acts on: 404 when there is none, 403 when it reaches beyond the user's scope."""
    async with p.db.connect() as conn:
        row = await _load(conn, bid)
    if row is None:
        raise ApiError(404, "no such broadcast")
    if outside_scope(p, user, list(row["boxes"])):
        raise ApiError(403, "that broadcast reaches boxes outside your scope")
    return row


def _sent(out: dict[str, Any], failure: str | None, *, ok: int) -> JSONResponse:
    """The answer after a publish: `ok`, or 503 saying the broker did not take it (resend retries)."""
    if failure is None:
        return JSONResponse(out, status_code=ok)
    out["error"] = f"the broker did not take it: {failure} (POST .../resend publishes it again)"
    return JSONResponse(out, status_code=503)


# --------------------------------------------------------------------------------------------- routes
@api
async def create(request: Request) -> Response:
    user = authorize(request, "broadcast.create")
    p = parts(request)
    body = await read_json(request)
    now = p.now_s()
    tz = push.zone(p.config.county.timezone)
    data, targets, ttl, raw_audio = parse_body(body, now, tz)
    force = body.get("force") is True
    if data["class"] == "emergency":
        authorize(request, "broadcast.emergency")
    boxes = await reach_boxes(p, user, targets, force=force, refused="broadcast.refused")
    if not force:
        check_times(data, now, tz)
    bid = str(uuid.uuid4())
    review = _needs_review(p, data["class"])
    created = p.now_ms()
    audio = data["audio"]
    row = {"id": bid, "state": "awaiting_review" if review else "publishing", "created_by": user.name,
           "created_at": created, "class": data["class"], "level": data["level"], "title": data["title"],
           "text": data["text"], "audio_mime": audio["mime"] if audio else None,
           "audio_sha256": audio["sha256"] if audio else None, "audio": raw_audio, "volume": data["volume"],
           "start": data["start"], "end": data["end"], "exp": created // 1000 + ttl, "targets": targets,
           "boxes": boxes, "token": None, "repeat": data.get("repeat")}
    async with p.db.begin() as conn:
        await conn.execute(broadcasts_t.insert().values(**row))
        await audit_append(conn, user.name, "broadcast.create", bid,
                           {"class": data["class"], "targets": targets, "boxes": len(boxes), "review": review,
                            "title": data["title"]})
    if review:
        return JSONResponse({"id": bid, "state": "awaiting_review", "boxes": boxes}, status_code=201)
    state, failure = await _sign_and_send(p, request, row, now=now)
    return _sent({"id": bid, "state": state, "boxes": boxes}, failure, ok=201)


@api
async def approve(request: Request) -> Response:
    user = authorize(request, "broadcast.approve")
    p = parts(request)
    bid = request.path_params["id"]
    row = await _load_for(p, user, bid)
    if row["state"] != "awaiting_review":
        raise ApiError(409, f"broadcast is {row['state']}, not awaiting_review", state=row["state"])
    if row["created_by"] == user.name:
        raise ApiError(403, "a broadcast is approved by a different user than its author")
    async with p.db.begin() as conn:
        claimed = await conn.execute(
            update(broadcasts_t).where(broadcasts_t.c.id == bid, broadcasts_t.c.state == "awaiting_review")
            .values(state="publishing", approved_by=user.name, approved_at=p.now_ms()))
        if claimed.rowcount != 1:
            raise ApiError(409, "broadcast is no longer awaiting_review")
        await audit_append(conn, user.name, "broadcast.approve", bid, {"created_by": row["created_by"]})
    state, failure = await _sign_and_send(p, request, row, now=p.now_s())
    return _sent({"id": bid, "state": state}, failure, ok=200)


@api
async def cancel(request: Request) -> Response:
    user = authorize(request, "broadcast.cancel")
    p = parts(request)
    bid = request.path_params["id"]
    row = await _load_for(p, user, bid)
    if row["state"] not in (*LIVE, "awaiting_review"):
        raise ApiError(409, f"broadcast is {row['state']}", state=row["state"])
    cancel_id: str | None = None
    failure: str | None = None
    if row["state"] != "awaiting_review":  # it may be on the boxes: tell them
        key, kid = await signing_key(request)
        payload = push.command("broadcast.cancel", {"broadcast": bid}, list(row["targets"]), now=p.now_s())
        cancel_id = payload["id"]
        token = push.sign(payload, key, kid)
        t = topics_of(p)
        failure = await publish_all(p, token, [push.target_topic(x, t) for x in payload["to"]])
        if failure is not None:
            raise ApiError(503, f"the broker did not take the cancel: {failure}; the broadcast is unchanged")
    async with p.db.begin() as conn:
        done = await conn.execute(
            update(broadcasts_t).where(broadcasts_t.c.id == bid, broadcasts_t.c.state == row["state"])
            .values(state="cancelled", cancelled_by=user.name, cancelled_at=p.now_ms()))
        if done.rowcount != 1:
            raise ApiError(409, "broadcast changed meanwhile; look again")
        await audit_append(conn, user.name, "broadcast.cancel", bid, {"from": row["state"], "cancel_id": cancel_id})
    return JSONResponse({"id": bid, "state": "cancelled", "cancel_id": cancel_id})


RECEIPT_EXTRAS = ("at", "until", "detail", "by", "occurrence", "late_s", "missed")


async def _board(conn: Any, row: Any) -> dict[str, Any]:
    got: dict[str, Any] = {r["box"]: dict(r) for r in (await conn.execute(
        select(receipts_t).where(receipts_t.c.cmd == row["id"]))).mappings()}
    # what the latest receipt said besides its state (a scheduled one's `at`, a rejected one's `detail`),
    # from the stored envelope
    envelopes = [r["envelope"] for r in got.values()]
    for i in range(0, len(envelopes), 500):
        for m in (await conn.execute(select(messages_t.c.box, messages_t.c.raw)
                                     .where(messages_t.c.id.in_(envelopes[i:i + 500])))).all():
            try:
                data = json.loads(m.raw).get("data") or {}
            except (ValueError, AttributeError):
                continue
            if m.box in got and isinstance(data, dict):
                got[m.box]["extra"] = {k: data[k] for k in RECEIPT_EXTRAS
                                       if isinstance(data.get(k), (int, float, str)) and not isinstance(data[k], bool)}
    return got


@api
async def resend(request: Request) -> Response:
    user = authorize(request, "broadcast.resend")
    p = parts(request)
    bid = request.path_params["id"]
    async with p.db.connect() as conn:
        row = await _load(conn, bid)
        got = await _board(conn, row) if row is not None else {}
    if row is None:
        raise ApiError(404, "no such broadcast")
    if outside_scope(p, user, list(row["boxes"])):
        raise ApiError(403, "that broadcast reaches boxes outside your scope")
    if row["state"] not in LIVE or row["token"] is None:
        raise ApiError(409, f"broadcast is {row['state']}; only a sent broadcast is resent", state=row["state"])
    if row["exp"] is not None and row["exp"] <= p.now_s():
        raise ApiError(409, "the signed command has expired; create a new broadcast", state="expired")
    silent = [b for b in row["boxes"] if b not in got]
    t = topics_of(p)
    failure = await publish_all(p, row["token"].encode("ascii"), [t.box_cmd(b) for b in silent])
    async with p.db.begin() as conn:
        if failure is None and row["state"] != "sent":
            await conn.execute(update(broadcasts_t).where(broadcasts_t.c.id == bid).values(state="sent"))
        await audit_append(conn, user.name, "broadcast.resend", bid,
                           {"boxes": silent[:200], "count": len(silent), "error": failure})
    if failure is not None:
        raise ApiError(503, f"the broker did not take it: {failure}")
    return JSONResponse({"id": bid, "state": "sent", "resent_to": silent})


def broadcast_json(row: Any, got: dict[str, Any], p: Parts, scope: str | None) -> dict[str, Any]:
    receipts = []
    for box in row["boxes"]:
        if not in_scope(p.regions, scope, box):
            continue
        r = got.get(box)
        name = place(p.regions, box)[0]
        receipts.append({"box": box, "name": name, "state": r["state"] if r else NO_ANSWER,
                         "reason": r["reason"] if r else None, "ts": r["ts"] if r else None,
                         **({"extra": r["extra"]} if r and r.get("extra") else {})})
    return {"id": row["id"], "state": row["state"], "receipts": receipts,
            "class": row["class"], "level": row["level"], "title": row["title"], "text": row["text"],
            "audio_mime": row["audio_mime"], "audio_sha256": row["audio_sha256"], "volume": row["volume"],
            "start": row["start"], "end": row["end"], "exp": row["exp"], "targets": row["targets"],
            "created_by": row["created_by"], "created_at": row["created_at"],
            "approved_by": row["approved_by"], "approved_at": row["approved_at"],
            "cancelled_by": row["cancelled_by"], "cancelled_at": row["cancelled_at"], "repeat": row["repeat"]}


@api
async def get_one(request: Request) -> Response:
    user = authorize(request, "broadcasts.read")
    p = parts(request)
    bid = request.path_params["id"]
    async with p.db.connect() as conn:
        row = await _load(conn, bid)
        got = await _board(conn, row) if row is not None else {}
    return JSONResponse(broadcast_json(reaching(p, user, row, "broadcast"), got, p, user.scope))


@api
async def list_all(request: Request) -> Response:
    user = authorize(request, "broadcasts.read")
    p = parts(request)
    limit = int_param(request, "limit", LIST_DEFAULT_LIMIT, lo=1, hi=LIST_MAX_LIMIT)
    assert limit is not None
    cols = [c for c in broadcasts_t.c if c.name not in ("audio", "token")]
    order = (broadcasts_t.c.created_at.desc(), broadcasts_t.c.id.desc())
    out: list[dict[str, Any]] = []
    offset = 0
    async with p.db.connect() as conn:
        while len(out) < limit:  # a scoped user: read on past the broadcasts of other townships
            page = (await conn.execute(select(*cols).order_by(*order).offset(offset).limit(limit))).mappings().all()
            out += [dict(r) for r in page if any(in_scope(p.regions, user.scope, b) for b in r["boxes"])]
            offset += len(page)
            if len(page) < limit:
                break
    out = out[:limit]
    return JSONResponse(out)


def routes() -> list[Route]:
    return [
        Route("/api/v1/broadcasts", create, methods=["POST"]),
        Route("/api/v1/broadcasts", list_all, methods=["GET"]),
        Route("/api/v1/broadcasts/{id}", get_one, methods=["GET"]),
        Route("/api/v1/broadcasts/{id}/approve", approve, methods=["POST"]),
        Route("/api/v1/broadcasts/{id}/cancel", cancel, methods=["POST"]),
        Route("/api/v1/broadcasts/{id}/resend", resend, methods=["POST"]),
    ]
