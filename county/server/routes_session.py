"""Login, logout and who am I: `POST /api/v1/session`, `DELETE /api/v1/session`, `GET /api/v1/me`,
and `GET /api/v1/health` (no session needed: for load balancers).

`POST /api/v1/session {"username", "password"}` -> 200 `{"token", "csrf", "expires_at", "user"}` and the
`vc_session` cookie; 401 `{"error": "unauthorized"}` on bad credentials (the same answer for an unknown
user, a wrong password and a disabled user); 429 with Retry-After past the login rate limit; 400 for a
body that is not `{"username": str, "password": str}`. Every attempt that is checked is audited
(`login` / `login.failed`); attempts refused by the rate limit are not (they are not checked, and a flood
must not grow the log).
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from county.server import audit, auth
from county.server.app import bearer_or_cookie, json_error
from county.server.users import USER_RE, create_session, end_session, get_user

MAX_LOGIN_BODY = 16 * 1024


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _credentials(request: Request) -> tuple[str, str] | Response:
    raw = await request.body()
    if len(raw) > MAX_LOGIN_BODY:
        return json_error(413, f"a login body is at most {MAX_LOGIN_BODY} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return json_error(400, 'body is not JSON: {"username": "...", "password": "..."}')
    if not isinstance(body, dict) or not isinstance(body.get("username"), str) \
            or not isinstance(body.get("password"), str) or set(body) - {"username", "password"}:
        return json_error(400, 'body must be {"username": "...", "password": "..."}')
    return body["username"], body["password"]


async def login(request: Request) -> Response:
    got = await _credentials(request)
    if isinstance(got, Response):
        return got
    username, password = got
    st = request.app.state
    addr = _client(request)
    keys = [("user", username.lower()[:64]), ("addr", addr)]
    wait = await st.limiter.aretry_after(keys)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        return json_error(429, f"too many failed logins: try again in {seconds} s",
                          headers={"Retry-After": str(seconds)})
    valid_name = bool(USER_RE.match(username))
    async with st.db.connect() as conn:
        row = await get_user(conn, username) if valid_name else None
    stored = row.password_hash if row is not None and not row.disabled else None
    ok = await auth.verify_password_async(stored, password)
    now = st.clock()
    if not ok or row is None:
        await st.limiter.afailed(keys)
        reason = "unknown user" if row is None else ("disabled" if row.disabled else "wrong password")
        async with st.db.begin() as conn:
            await audit.append(conn, username[:64] if valid_name else "?", "login.failed", None,
                               {"username": username[:200], "addr": addr, "reason": reason}, ts=now)
        return json_error(401, "wrong user name or password", headers={"WWW-Authenticate": "Bearer"})
    await st.limiter.asucceeded(keys[0])
    ttl_ms = int(st.config.server.session_hours * 3600 * 1000)
    async with st.db.begin() as conn:
        session = await create_session(conn, row.name, now, ttl_ms)
        await audit.append(conn, row.name, "login", None, {"addr": addr, "expires_at": session.expires_at}, ts=now)
    user = auth.User(name=row.name, role=row.role, scope=row.scope, display_name=row.display_name, phone=row.phone)
    response = JSONResponse({"token": session.token, "csrf": session.csrf, "expires_at": session.expires_at,
                             "user": user.public()})
    response.set_cookie(auth.COOKIE, session.token, max_age=ttl_ms // 1000, path="/", httponly=True,
                        samesite="strict", secure=st.config.server.tls)
    return response


async def logout(request: Request) -> Response:
    user = auth.require_user(request)
    token, _via = bearer_or_cookie(request)
    st = request.app.state
    async with st.db.begin() as conn:
        if token is not None:
            await end_session(conn, token)
        await audit.append(conn, user.name, "logout", None, {"addr": _client(request)}, ts=st.clock())
    response = JSONResponse({"ok": True})
    response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict", secure=st.config.server.tls)
    return response


async def me(request: Request) -> Response:
    user = auth.require_user(request)
    body: dict[str, Any] = {"user": user.public(), "csrf": user.csrf, "expires_at": user.expires_at,
                            "may": sorted(auth.GRANTS.get(user.role, ()))}
    return JSONResponse(body)


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/session", login, methods=["POST"]),
        Route("/api/v1/session", logout, methods=["DELETE"]),
        Route("/api/v1/me", me, methods=["GET"]),
        Route("/api/v1/health", health, methods=["GET", "HEAD"]),
    ]
