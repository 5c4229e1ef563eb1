"""Security headers on every response of the county server (pages, static files and the JSON API).

- Content-Security-Policy: scripts only from this origin (no inline script, no eval), styles only from
  this origin (no <style> or style="" in markup; scripts may still set element.style), no plugins, no
  framing (`frame-ancestors 'none'`), forms post only here. Images also from `data:`/`blob:` (canvas,
  map markers); a page needing another origin (a map tile server) adds it to `app.state.csp_extra`
  (`{"img-src": ["https://t0.tianditu.gov.cn"]}`) at start, never per request.
- X-Content-Type-Options: nosniff; X-Frame-Options: DENY (older browsers); Referrer-Policy: same-origin.
- Strict-Transport-Security when the server speaks TLS.

A header a route set itself is kept (a download may have its own policy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BASE_POLICY: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:", "blob:"],
    "media-src": ["'self'", "blob:", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def content_security_policy(extra: Mapping[str, Sequence[str]] | None = None) -> str:
    policy = {k: list(v) for k, v in BASE_POLICY.items()}
    for directive, sources in (extra or {}).items():
        if directive == "script-src":
            raise ValueError("script-src stays 'self': load scripts from this server (county/web/static)")
        policy.setdefault(directive, []).extend(s for s in sources if s not in policy.get(directive, []))
    return "; ".join(f"{k} {' '.join(v)}" for k, v in policy.items())


class SecurityHeaders:
    """ASGI middleware adding the headers above to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._csp: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        if self._csp is None:
            self._csp = content_security_policy(getattr(state, "csp_extra", None))
        csp = self._csp
        tls = bool(getattr(getattr(state, "config", None), "server", None) and state.config.server.tls)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", csp)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "same-origin")
                if tls:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)
