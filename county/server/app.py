"""The county server's ASGI app: `create_app(config, db, hub, mqtt)`.

Routes come from the `county/server/routes_*.py` modules, each with a `routes() -> list[BaseRoute]`
(routes_session first, the others in name order; `routes_common` is a helper module, not mounted). Adding a
module is all it takes to mount it.

Every path under /api/ needs a session (Bearer token or the `vc_session` cookie, see auth.py) except
`POST /api/v1/session` (login), `GET /api/v1/health` and `GET /api/v1/openapi.json` (the API's OpenAPI
3.1 description, county/server/openapi.py: it holds no data): the auth middleware answers 401 before any route
runs, and 403 for a cookie-authenticated write without the CSRF header. Routes get the user with
`auth.require(request, action, region)` (or `auth.current_user`), and the app's parts from
`request.app.state`: `config`, `db`, `hub`, `mqtt`, `regions`, `clock` (epoch ms), `limiter`.

Errors are JSON: `{"error": "forbidden", "detail": "operator 'li' may not broadcast.approve"}`.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from county.regions import Regions
from county.server import auth
from county.server.config import CountyConfig

log = logging.getLogger("county.server")

ERROR_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
               422: "unprocessable", 429: "too_many_requests", 500: "internal", 503: "unavailable"}
PUBLIC = frozenset({("POST", "/api/v1/session"), ("GET", "/api/v1/health"), ("HEAD", "/api/v1/health"),
                    ("GET", "/api/v1/openapi.json"), ("HEAD", "/api/v1/openapi.json")})


def json_error(status: int, detail: str, *, error: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error or ERROR_NAMES.get(status, "error"), "detail": detail},
                        status_code=status, headers=headers)


def now_ms() -> int:
    return int(time.time() * 1000)


class AuthMiddleware:
    """Resolves the session of every /api/ request (401 without one), checks CSRF on cookie writes (403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = scope["app"].state
        too_big = _too_big(request, state.config.server.max_body_bytes)
        if too_big is not None:
            await too_big(scope, receive, send)
            return
        if not scope["path"].startswith("/api/") or (scope["method"], scope["path"]) in PUBLIC:
            await self.app(scope, receive, send)
            return
        token, via = bearer_or_cookie(request)
        user = None
        if token is not None:
            user = await _session_user(state, token, via)
        if user is None:
            why = "no session: log in with POST /api/v1/session" if token is None else \
                "the session is unknown or has expired: log in again"
            await json_error(401, why, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if via == "cookie" and scope["method"] not in auth.SAFE_METHODS \
                and not auth.csrf_ok(user, request.headers.get(auth.CSRF_HEADER)):
            await json_error(403, f"a write with the session cookie needs the {auth.CSRF_HEADER} header "
                                  "(GET /api/v1/me gives it)", error="csrf")(scope, receive, send)
            await _audit_denied(state, user, request, "csrf")
            return
        scope.setdefault("state", {})["user"] = user
        status: list[int] = []

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, send_noting_status)
        if status and status[0] == 403:
            await _audit_denied(state, user, request, "forbidden")


def _too_big(request: Request, most: int) -> Response | None:
    length = request.headers.get("content-length")
    if length is None:
        return None
    if not length.isdigit():
        return json_error(400, "Content-Length is not a number")
    if int(length) > most:
        return json_error(413, f"the body is {length} bytes, over the server's {most} ([server] max_body_bytes)")
    return None


async def _audit_denied(state: Any, user: auth.User, request: Request, why: str) -> None:
    """A refused request (403: role, scope or CSRF) goes to the audit log, attributed to its user."""
    from county.server import audit

    try:
        async with state.db.begin() as conn:
            await audit.append(conn, user.name, "denied", request.url.path[:500],
                               {"method": request.method, "why": why}, ts=state.clock())
    except Exception:  # the refusal stands; a database hiccup must not turn it into a 500
        log.exception("could not audit a refused request")


def bearer_or_cookie(request: Request) -> tuple[str | None, str]:
    header = request.headers.get("authorization")
    if header is not None:
        kind, _, token = header.partition(" ")
        if kind.lower() == "bearer" and token.strip():
            return token.strip(), "bearer"
        return None, "bearer"
    cookie = request.cookies.get(auth.COOKIE)
    if cookie:
        return cookie, "cookie"
    return None, "cookie"


async def _session_user(state: Any, token: str, via: str) -> auth.User | None:
    from county.server.users import session_user

    if len(token) > 200:
        return None
    return await session_user(state.db, token, state.clock(), via)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


def route_modules() -> list[ModuleType]:
    """routes_session, then every other county/server/routes_*.py (not routes_common) in name order."""
    import county.server as package

    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                   if m.name.startswith("routes_") and m.name not in ("routes_common", "routes_session"))
    return [importlib.import_module(f"county.server.{n}") for n in ["routes_session", *names]]


def create_app(config: CountyConfig, db: Any, hub: Any = None, mqtt: Any = None, *, regions: Regions | None = None,
               clock: Callable[[], int] | None = None, modules: Sequence[ModuleType] | None = None) -> Starlette:
    """The app over an open `Database`; `hub` the event hub (events.py), `mqtt` the publisher for commands.
    `clock` (epoch ms) is for tests; `modules` limits the route modules mounted (default: all)."""
    from county.server import openapi  # the API's description: public, see openapi.py

    routes: list[BaseRoute] = [Route(openapi.PATH, openapi.endpoint, methods=["GET"])]
    for module in (route_modules() if modules is None else modules):
        routes.extend(_routes_of(module))
    from county.web.security import SecurityHeaders  # CSP, nosniff, no framing: on every response

    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders), Middleware(AuthMiddleware)],
                    exception_handlers={HTTPException: _http_error})
    clock = clock or now_ms
    app.state.config = config
    app.state.db = db
    app.state.hub = hub
    app.state.mqtt = mqtt
    app.state.regions = regions if regions is not None else Regions.empty()
    app.state.clock = clock
    from county.server.routes_map import tile_origins  # the [map] tile server may serve the pages' images

    app.state.csp_extra = {"img-src": tile_origins(config.map)}  # read by county/web/security.py
    app.state.limiter = auth.DbLoginLimiter(db, config.server.login_max_failures, config.server.login_window_s,
                                            clock=clock)  # in the database: every instance counts the same failures
    return app


def _routes_of(module: ModuleType) -> Iterable[BaseRoute]:
    fn = getattr(module, "routes", None)
    if not callable(fn):
        raise TypeError(f"{module.__name__} has no routes() function")
    return list(fn())
