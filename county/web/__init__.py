"""The county web console: server-rendered HTML shells (Jinja2, Babel gettext) filled by ES modules that
call the JSON API (/api/v1/...) with the session cookie and the CSRF header. How to add a page: README.md
in this directory. Mounted by county/server/routes_web.py.

A page gets no secret: the session token stays in the HttpOnly cookie; the page holds only the session's
CSRF token (in `<meta name="csrf-token">`, as GET /api/v1/me gives it) and the user's public fields.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import zoneinfo
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
# cache-busting for static URLs: the package version (a changed file under the same version is re-fetched
# after its max-age; the static files are small)
ASSET_VERSION = "1"


@functools.cache
def environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.policies["ext.i18n.trimmed"] = True
    env.filters["datetime"] = format_datetime
    env.filters["tojson_attr"] = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return env


def render(template: str, locale: str, **context: Any) -> str:
    """The template rendered in `locale` (zh_CN or en). Synchronous: the gettext callables installed here
    stay until the render is done (no other request renders in between on the event loop)."""
    from county.web import i18n

    cat = i18n.catalog(locale)
    env = environment()
    env.install_gettext_callables(cat.gettext, cat.ngettext, newstyle=True)
    return str(env.get_template(template).render(locale=cat.locale, lang=i18n.BCP47[cat.locale], **context))


def format_datetime(ms: int | None, locale: str = "zh_CN", timezone: str = "Asia/Shanghai") -> str:
    """Epoch ms as the locale's medium date and time in the county's timezone ("" for None)."""
    if ms is None:
        return ""
    from babel.dates import format_datetime as babel_format

    when = dt.datetime.fromtimestamp(ms / 1000, tz=zoneinfo.ZoneInfo(timezone))
    return str(babel_format(when, "medium", tzinfo=zoneinfo.ZoneInfo(timezone), locale=locale))
