"""GET /api/v1/events: the live stream (Server-Sent Events) of `alarm`, `receipt` and `box` events.

Each event is `id: N`, `event: KIND`, `data: JSON` (the object as the routes show it: an alarm as in
GET /api/v1/alarms, a receipt `{"cmd","box","state","reason","ts"}`, a box as in GET /api/v1/boxes),
from this instance's EventHub (county/server/events.py). Only what the user may see is sent: events of
boxes inside their scope, and for a gridworker only the alarms assigned to them. A `lost` event
(`{"count": n}`) says this stream fell behind and dropped events: reload the lists.

A comment line (`: heartbeat`) goes out every `HEARTBEAT_S` seconds of silence, so proxies keep the
connection and a browser that went away is noticed at the next write. `?kinds=alarm,receipt` narrows the
stream. The stream ends (the response completes) when the client disconnects, when the user's session
expires, or when the hub is closed (server shutdown: the server closes the hub before stopping uvicorn,
which would otherwise wait for open streams).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from county.server.routes_common import ApiError, Parts, api, authorize, in_scope, parts
from drivers.aio import wait_within

HEARTBEAT_S = 15.0
KINDS = ("alarm", "receipt", "box")
RETRY_MS = 3000  # the browser's reconnect delay (EventSource `retry:`)


def visible(p: Parts, user: Any, kind: str, data: dict[str, Any]) -> bool:
    if kind == "lost":
        return True
    box = data.get("id") if kind == "box" else data.get("box")
    if not isinstance(box, str) or not in_scope(p.regions, user.scope, box):
        return False
    if kind == "alarm" and user.role == "gridworker":
        return bool(data.get("assigned_to") == user.name)
    return True


def frame(event_id: int, kind: str, data: dict[str, Any]) -> bytes:
    # json.dumps escapes CR and LF, so the data is one `data:` line
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"id: {event_id}\nevent: {kind}\ndata: {text}\n\n".encode()


@api
async def events(request: Request) -> Response:
    user = authorize(request, "events.read")
    p = parts(request)
    if p.hub is None:
        raise ApiError(503, "this server has no event stream")
    wanted = request.query_params.get("kinds")
    kinds: tuple[str, ...] = KINDS
    if wanted:
        kinds = tuple(k for k in wanted.split(",") if k)
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ApiError(400, f"kinds must be among {', '.join(KINDS)}")
    heartbeat = float(getattr(request.app.state, "sse_heartbeat_s", HEARTBEAT_S))
    ends = getattr(user, "expires_at", 0) / 1000 or None
    sub = p.hub.open(kinds)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
            while True:
                wait = heartbeat
                if ends is not None:
                    left = ends - p.now_s()
                    if left <= 0:
                        yield b"event: session_expired\ndata: {}\n\n"
                        return
                    wait = min(wait, left)
                try:
                    event = await wait_within(sub.get(), wait)  # never wait_for: it can lose a stop
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                except StopAsyncIteration:  # the hub was closed: the server is stopping
                    return
                if visible(p, user, event.kind, event.data):
                    yield frame(event.id, event.kind, event.data)
        finally:
            sub.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def routes() -> list[Route]:
    return [Route("/api/v1/events", events, methods=["GET"])]
