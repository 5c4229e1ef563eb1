"""What the API routes share: the app's parts, JSON errors, reading a body, the user's scope over boxes, and
signing and publishing a command (broadcasts, fence pushes).

Every route module reads the server's parts (config, database, event hub, publisher, regions) through
`parts(request)` so the route code does not depend on how the app factory stores them. A box is in a
user's scope when the user has no scope (the whole county) or the box's village or township is the scope;
a box the regions file does not name ("unregistered") is in the whole-county scope only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agent import words
from agent.protocol import jws
from agent.protocol.topics import Topics
from county import push
from county.server.auth import require
from county.server.publish import PublishError
from county.store.tables import boxes as boxes_t

log = logging.getLogger("county.routes")

MAX_TARGETS = 200
MAX_BODY_BYTES = 8 * 1024 * 1024  # a broadcast may carry 2 MiB of audio, base64: ~2.7 MiB


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Parts:
    config: Any
    db: Any
    hub: Any
    mqtt: Any
    regions: Any
    clock: Callable[[], int]  # epoch ms (the app's; tests may set it)

    def now_ms(self) -> int:
        return int(self.clock())

    def now_s(self) -> float:
        return self.clock() / 1000


def parts(request: Request) -> Parts:
    st = request.app.state
    return Parts(config=st.config, db=st.db, hub=getattr(st, "hub", None), mqtt=getattr(st, "mqtt", None),
                 regions=getattr(st, "regions", None), clock=getattr(st, "clock", now_ms))


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """The app's JSON error shape, `{"error": "conflict", "detail": "...", ...extra}`."""
    from county.server.app import ERROR_NAMES

    return JSONResponse({"error": ERROR_NAMES.get(status, "error"), "detail": message, **extra}, status_code=status)


def in_readers_words(request: Request, text: str) -> str:
    """An error's detail in Chinese when the request asks for it first (`Accept-Language: zh-CN`, which the
    web console sends in its own language): the problems our validators make (a CAP file, a fence file, a
    target, a time) and the sentences of the "village" catalog. Anything else, and any client that does not
    ask (scripts, `village county --server`), gets the API's English."""
    first = request.headers.get("accept-language", "").split(",")[0].split(";")[0].strip().lower()
    return words.problem(text, "zh") if first.startswith("zh") else text


class ApiError(Exception):
    """Raised inside a route: `api` turns it into `{"error": ...}` with the status."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


Endpoint = Callable[[Request], Awaitable[Response]]


def api(fn: Endpoint) -> Endpoint:
    """A route endpoint whose ApiError / HTTPException (e.g. `require`'s 403) answer as JSON errors."""

    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as exc:
            return error(exc.status, in_readers_words(request, exc.message), **exc.extra)
        except HTTPException as exc:
            resp = error(exc.status_code, str(exc.detail))
            resp.headers.update(exc.headers or {})
            return resp

    return endpoint


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, else ApiError 400 (an empty body is `{}`)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"body is {len(raw)} bytes, over {MAX_BODY_BYTES}")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "body is not UTF-8 JSON") from None
    except RecursionError:
        raise ApiError(400, "body JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body is not a JSON object")
    return body


def int_param(request: Request, name: str, default: int | None, *, lo: int, hi: int | None = None) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise ApiError(400, f"{name} must be {lo}..{hi}" if hi is not None else f"{name} must be >= {lo}")
    return value


# ------------------------------------------------------------------------------------- regions and scope
def place(regions: Any, box: str) -> tuple[str | None, str | None, str | None]:
    """(name, village id, township id) of a box from the regions file; (None, None, None) when unregistered."""
    if regions is None:
        return None, None, None
    found = regions.place(box)
    if not found.registered:
        return None, None, None
    return found.name, found.village, found.township


def in_scope(regions: Any, scope: str | None, box: str) -> bool:
    if scope is None:
        return True
    return regions is not None and bool(regions.in_scope(box, scope))


def reaching(p: Parts, user: Any, row: Any, what: str, *, short: str | None = None) -> Any:
    """A stored command a user reads or resends (`row`, or None): 404 when there is none, 403 when none of its
    boxes lies in the user's scope (a township sees the county-wide commands that reach its boxes)."""
    if row is None:
        raise ApiError(404, f"no such {what}")
    if not any(in_scope(p.regions, user.scope, b) for b in row["boxes"]):
        raise ApiError(403, f"that {short or what} reaches no box inside your scope")
    return row


def filter_scope(regions: Any, scope: str | None, boxes: Iterable[str]) -> list[str]:
    return [b for b in boxes if in_scope(regions, scope, b)]


def authorize(request: Request, action: str, region: str | None = None) -> Any:
    """The user of this request if the policy (county.server.auth.allowed) lets them do `action`; raises
    HTTPException 401/403 otherwise (`api` renders it). Scope over boxes is checked by the routes."""
    return require(request, action, region)


def scope_boxes(regions: Any, scope: str | None) -> set[str] | None:
    """Every box id under `scope` in the regions file; None for the whole county (no filter)."""
    if scope is None or (regions is not None and scope == regions.county_id):
        return None
    if regions is None or not regions.has_scope(scope):
        return set()
    return set(regions.boxes_in(scope))


async def audit_append(conn: Any, actor: str, action: str, target: str | None, detail: dict[str, Any]) -> None:
    """One audit row in the caller's transaction (S2's hash-chained log)."""
    from county.server import audit

    await audit.append(conn, actor, action, target, detail)


async def emit(hub: Any, kind: str, data: dict[str, Any]) -> None:
    """An event for the live stream of this instance (the other instances learn it from MQTT or not at all:
    API changes are seen on their next read)."""
    if hub is not None:
        hub.publish(kind, data)


# ----------------------------------------------------------------------------- signed commands to boxes
async def signing_key(request: Request) -> tuple[Ed25519PrivateKey, str]:
    """The county key and kid: `app.state.signing_key` (loaded by `village county serve` at start, so a bad
    key file is exit 2 there), else read once from [signing] key (in a thread) and kept."""
    st = request.app.state
    signing = st.config.signing
    if signing.key is None or signing.kid is None:
        raise ApiError(503, "this server has no signing key ([signing] key and kid in county.toml)")
    key = getattr(st, "signing_key", None)
    if key is None:
        try:
            key = await asyncio.to_thread(jws.load_private_key, signing.key)
        except jws.KeysError as exc:
            log.error("signing key: %s", exc)
            raise ApiError(503, "the signing key cannot be read (see the server log)") from None
        st.signing_key = key
    if not isinstance(key, Ed25519PrivateKey):
        raise ApiError(503, "the signing key is not an Ed25519 private key")
    return key, str(signing.kid)


def topics_of(p: Parts) -> Topics:
    return Topics(p.config.mqtt.topic_prefix)


async def reported_groups(conn: Any) -> dict[str, list[str]]:
    """{box: [groups it reported]} (`boxes.groups`), for resolving `group:` targets."""
    rows = (await conn.execute(select(boxes_t.c.id, boxes_t.c.groups))).all()
    return {r.id: list(r.groups or []) for r in rows}


def outside_scope(p: Parts, user: Any, boxes: Iterable[str]) -> list[str]:
    """The boxes (sorted) that lie outside the user's scope."""
    return sorted(b for b in boxes if not in_scope(p.regions, user.scope, b))


async def publish_all(p: Parts, token: bytes, topics: list[str]) -> str | None:
    """Publish to every topic (QoS 1, not retained); the first failure's text, or None when the broker took
    them all."""
    if p.mqtt is None:
        return "this server has no MQTT publisher"
    for topic in topics:
        try:
            await p.mqtt.publish(topic, token)
        except PublishError as exc:
            log.warning("publish to %s failed: %s", topic, exc)
            return str(exc)
    return None


def parse_targets(to: Any) -> list[str]:
    """A body's `to` (a list of `box:ID` / `group:NAME`) -> the targets, duplicates dropped; ApiError 400."""
    if not isinstance(to, list) or not to or not all(isinstance(t, str) for t in to) or len(to) > MAX_TARGETS:
        raise ApiError(400, f"to must be a list of 1..{MAX_TARGETS} targets (box:ID or group:NAME)")
    try:
        return list(dict.fromkeys(push.parse_target(t) for t in to))
    except push.UsageError as exc:
        raise ApiError(400, str(exc)) from None


async def reach_boxes(p: Parts, user: Any, targets: list[str], *, force: bool, refused: str) -> list[str]:
    """The boxes (sorted) the targets reach (the regions file and the groups the boxes reported). Targets
    reaching a box outside the user's scope: 403, audited as `refused`; a target no known box answers to:
    422 `nobody_hears` unless `force`; targets reaching no box at all: always 422."""
    async with p.db.connect() as conn:
        reported = await reported_groups(conn)
    reach = p.regions.resolve(targets, reported)
    boxes = sorted(set().union(*reach.values()))
    outside = outside_scope(p, user, boxes)
    if outside:
        async with p.db.begin() as conn:
            await audit_append(conn, user.name, refused, None,
                               {"targets": targets, "outside_scope": outside[:50], "scope": user.scope})
        raise ApiError(403, "the targets reach boxes outside your scope", outside_scope=outside[:50])
    unheard = [t for t, b in reach.items() if not b]
    if not boxes or (unheard and not force):
        why = (f"no known box answers to {', '.join(unheard)}" if unheard else "no box would hear it")
        raise ApiError(422, f"{why}; nothing sent (check the name, or force: true to send anyway)",
                       reason="nobody_hears", unheard=unheard)
    return boxes
