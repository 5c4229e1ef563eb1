"""The web console (county/web/): its pages, the login form, the catalogs for the scripts, static files.

- `GET /login`, `POST /login` (a form: username, password, next): the login runs through the session API's
  own handler (routes_session.login: rate limit, audit, the HttpOnly SameSite=Strict cookie), but the page
  gets a redirect and the cookie only, never the token. A cross-site form post (an `Origin` other than this
  server's) is refused, so nobody can log a visitor in under another account.
- Every page of county/web/pages/ at its path: without a session, 303 to /login?next=PATH; without the
  page's action, 403 in words. Pages are shells: their module under /static/js/ reads the JSON API.
- `GET /i18n/{locale}.json`: the catalog the scripts' t() uses (public: it holds only interface text).
- `/static/`: county/web/static; `/static/vendor/NAME/`: each installed xstatic package (`xstatic-leaflet`
  -> /static/vendor/leaflet/), from its BASE_DIR.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from county import web
from county.server import auth
from county.server.users import session_user
from county.web import i18n
from county.web.pages import NAV, ROLE_NAMES, Page, all_pages

NO_STORE = {"Cache-Control": "no-store"}


def locale_of(request: Request) -> str:
    return i18n.normalize(request.cookies.get(i18n.LANG_COOKIE))


async def page_user(request: Request) -> auth.User | None:
    """The user of the session cookie (pages are for browsers: no bearer tokens), or None."""
    token = request.cookies.get(auth.COOKIE)
    if not token or len(token) > 200:
        return None
    st = request.app.state
    return await session_user(st.db, token, st.clock(), "cookie")


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (another site, a scheme) is "/"."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _common(request: Request, user: auth.User | None, locale: str) -> dict[str, Any]:
    st = request.app.state
    may = sorted(auth.GRANTS.get(user.role, ())) if user is not None else []
    nav = [e for e in NAV if any(a in may for a in e.need)]
    return {"user": user.public() if user is not None else None, "may": may, "nav": nav,
            "csrf": user.csrf if user is not None else "", "timezone": st.config.county.timezone,
            "county_name": _county_name(st), "asset_version": web.ASSET_VERSION, "locales": i18n.LOCALES,
            "role_names": ROLE_NAMES}


def _county_name(st: Any) -> str:
    regions = getattr(st, "regions", None)
    if regions is None or not regions.county_id:
        return ""
    try:
        return str(regions.region(regions.county_id).name)
    except (KeyError, AttributeError):
        return ""


def _page_endpoint(page: Page) -> Any:
    async def endpoint(request: Request) -> Response:
        user = await page_user(request)
        locale = locale_of(request)
        if user is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303, headers=NO_STORE)
        ctx = _common(request, user, locale)
        if page.need is not None and not auth.allowed(user, page.need):
            body = web.render("error.html", locale, nav_key=page.nav, status=403, **ctx)
            return HTMLResponse(body, status_code=403, headers=NO_STORE)
        extra = await page.context(request, user) if page.context is not None else {}
        body = web.render(page.template, locale, page_title=page.title, nav_key=page.nav, page=page,
                          script=page.script, params=dict(request.path_params), **ctx, **extra)
        return HTMLResponse(body, headers=NO_STORE)

    endpoint.__name__ = f"page_{page.name}"
    return endpoint


def _origin_ok(request: Request) -> bool:
    """A form post from this server's own pages: no Origin (old browsers) or the same scheme://host."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    mine = f"{request.url.scheme}://{request.url.netloc}"
    return origin == mine


async def login_page(request: Request) -> Response:
    locale = locale_of(request)
    target = safe_next(request.query_params.get("next"))
    if await page_user(request) is not None:
        return RedirectResponse(target, status_code=303, headers=NO_STORE)
    body = web.render("login.html", locale, next=target, error=None, username="", script="login.js",
                      **_common(request, None, locale))
    return HTMLResponse(body, headers=NO_STORE)


async def login_submit(request: Request) -> Response:
    from county.server import routes_session

    locale = locale_of(request)
    common = _common(request, None, locale)
    if not _origin_ok(request):
        body = web.render("login.html", locale, next="/", error="cross_site", username="", script="login.js",
                          **common)
        return HTMLResponse(body, status_code=403, headers=NO_STORE)
    raw = await request.body()
    if len(raw) > routes_session.MAX_LOGIN_BODY:
        return HTMLResponse("too large", status_code=413)
    # an urlencoded form is all the login page posts: parsed here, no multipart parser needed
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        form = {}
    username, password = form.get("username", ""), form.get("password", "")
    target = safe_next(form.get("next") or "/")
    answer = await routes_session.login(_json_request(request, {"username": username, "password": password}))
    if answer.status_code == 200:
        redirect = RedirectResponse(target, status_code=303, headers=NO_STORE)
        for key, value in answer.raw_headers:
            if key.lower() == b"set-cookie":
                redirect.raw_headers.append((key, value))
        return redirect
    error = {401: "credentials", 429: "rate_limited"}.get(answer.status_code, "invalid")
    retry = answer.headers.get("retry-after")
    body = web.render("login.html", locale, next=target, error=error, retry_after=retry, script="login.js",
                      username=username[:64], **common)
    headers = dict(NO_STORE) | ({"Retry-After": retry} if retry else {})
    return HTMLResponse(body, status_code=answer.status_code, headers=headers)


def _json_request(request: Request, body: dict[str, str]) -> Request:
    """The same request with a JSON body instead of the form: what the session API's login reads."""
    data = json.dumps(body).encode("utf-8")
    scope = dict(request.scope)
    scope["headers"] = [(k, v) for k, v in request.scope["headers"]
                        if k not in (b"content-type", b"content-length")] + [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    return Request(scope, receive)


async def catalog(request: Request) -> Response:
    locale = request.path_params["locale"]
    if locale not in i18n.LOCALES:
        return Response(status_code=404)
    return Response(i18n.catalog_json(locale), media_type="application/json",
                    headers={"Cache-Control": "public, max-age=300"})


def vendor_mounts() -> list[Mount]:
    """/static/vendor/NAME for every installed xstatic package (xstatic.pkg.NAME, its BASE_DIR)."""
    try:
        import xstatic.pkg as pkg  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return []
    mounts = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"xstatic.pkg.{info.name}")
        base = getattr(module, "BASE_DIR", None)
        if base:
            mounts.append(Mount(f"/static/vendor/{info.name}", app=StaticFiles(directory=base),
                                name=f"vendor-{info.name}"))
    return mounts


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/i18n/{locale}.json", catalog, methods=["GET"]),
    ]
    out += [Route(p.path, _page_endpoint(p), methods=["GET"], name=p.name) for p in all_pages()]
    out += vendor_mounts()
    out.append(Mount("/static", app=StaticFiles(directory=str(web.STATIC)), name="static"))
    return out
