"""What the API routes share: the app's parts, JSON errors, reading a body, the user's scope over boxes.

Every route module reads the server's parts (config, database, event hub, publisher, regions) through
`parts(request)` so the route code does not depend on how the app factory stores them. A box is in a
user's scope when the user has no scope (the whole county) or the box's village or township is the scope;
a box the regions file does not name ("unregistered") is in the whole-county scope only.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from county.server.auth import require

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
            return error(exc.status, exc.message, **exc.extra)
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
