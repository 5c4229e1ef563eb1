"""The console's pages: each module in this package has `PAGES: list[Page]`; routes_web mounts them all.

A page is a template (county/web/templates/), the nav entry it lights up, the action its user needs
(county/server/auth.py ACTIONS; without it the page answers 403 in words), and the ES module that fills
it from the JSON API (county/web/static/js/). `context` (optional) adds template variables; it gets the
request and the user and must not read anything the user's role may not (the API stays the authority).

NAV is the navigation bar, in order; an entry shows only to a user who may do its `need`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


def N_(text: str) -> str:
    """Marks a string for the catalog (python -m county.web.i18n update); translated where it is shown."""
    return text


Context = Callable[[Any, Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Page:
    path: str            # Starlette path, e.g. "/boxes/{id}"
    name: str            # route name, unique
    template: str        # e.g. "boxes.html"
    title: str           # msgid (mark it with N_)
    nav: str             # the NAV key it belongs to
    need: str | None     # an action of auth.ACTIONS, or None: any logged-in user
    script: str | None = None  # module under static/js/, e.g. "boxes.js"
    context: Context | None = field(default=None, compare=False)


@dataclass(frozen=True)
class NavEntry:
    key: str
    href: str
    label: str           # msgid
    need: tuple[str, ...]  # any one of these actions shows it


NAV: tuple[NavEntry, ...] = (
    NavEntry("overview", "/", N_("Overview"), ("boxes.read",)),
    NavEntry("alarms", "/alarms", N_("Alarms"), ("alarms.read",)),
    NavEntry("broadcasts", "/broadcasts", N_("Broadcasts"), ("broadcasts.read",)),
    NavEntry("live", "/live", N_("Live broadcast"), ("broadcast.create",)),
    NavEntry("fences", "/fences", N_("Geofences"), ("fences.read",)),
    NavEntry("boxes", "/boxes", N_("Boxes"), ("boxes.read",)),
    NavEntry("cameras", "/cameras", N_("Cameras"), ("reports.read",)),
    NavEntry("rollouts", "/rollouts", N_("Rollouts"), ("release.manage",)),
    NavEntry("users", "/users", N_("Users & audit"), ("users.read", "audit.read")),
)


ROLE_NAMES: dict[str, str] = {
    "admin": N_("Administrator"),
    "operator": N_("Operator"),
    "reviewer": N_("Reviewer"),
    "viewer": N_("Viewer"),
    "gridworker": N_("Grid worker"),
}


def all_pages() -> list[Page]:
    """Every page of every module in this package (name order); duplicate paths or names are a bug."""
    import county.web.pages as package

    pages: list[Page] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"county.web.pages.{info.name}")
        pages.extend(getattr(module, "PAGES", []))
    paths = [p.path for p in pages]
    names = [p.name for p in pages]
    if len(set(paths)) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"county/web/pages: duplicate page paths or names in {paths}")
    return pages
