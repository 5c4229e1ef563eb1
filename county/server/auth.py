"""Who may do what: passwords (argon2id), sessions, CSRF, the login rate limit and the one policy function.

- Passwords: argon2id (argon2-cffi's PasswordHasher defaults), verified in a worker thread so a login never
  stalls the event loop; an unknown user costs the same verification as a wrong password.
- Sessions: a random token (32 bytes, urlsafe) given once to the client; only its sha256 is stored (table
  `sessions`), with the user, a CSRF token and an expiry (`[server] session_hours`, default 12). The token
  comes back as `Authorization: Bearer TOKEN` (scripts) or as the `vc_session` cookie (the browser;
  HttpOnly, SameSite=Strict, Secure when the server speaks TLS).
- CSRF: a write (any method but GET/HEAD/OPTIONS) authenticated by the cookie needs the session's CSRF token
  in the `X-CSRF-Token` header; a bearer token needs none (a browser never sends it on its own).
- Login rate limit: `[server] login_max_failures` failures (default 5) within `login_window_s` (300) for one
  user name, or from one client address, answer 429 until the window has passed. The failures are rows of
  the database (`login_failures`, `DbLoginLimiter`), so every instance of the server counts the same ones.
- Policy: `allowed(user, action, region, regions)` is the only place roles × actions × scopes are decided;
  `require(request, action, region)` is what routes call (401 without a user, 403 when refused).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from starlette.exceptions import HTTPException
from starlette.requests import Request

from county.store.tables import login_failures as _lf

ROLES = ("admin", "operator", "reviewer", "viewer", "gridworker")
COOKIE = "vc_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_READ = frozenset({"boxes.read", "messages.read", "alarms.read", "broadcasts.read", "fences.read", "events.read",
                   "reports.read"})
# every action a route may ask about; an action not listed is a bug (ValueError), never silently refused
ACTIONS = _READ | frozenset({
    "alarm.ack", "alarm.assign", "alarm.resolve",
    "broadcast.create",      # a daily broadcast or a drill (held for review when [review] says so)
    "broadcast.emergency",   # an emergency broadcast: never held for review
    "broadcast.approve",     # the review step (审核): a second user approves a held broadcast
    "broadcast.cancel", "broadcast.resend",
    "fence.edit",            # create, change or delete a stored fence (PUT/DELETE /api/v1/fences/{id})
    "fence.push",            # sign and publish a geofence.set of stored fences to boxes inside the scope
    "users.read", "user.manage", "audit.read",
    "release.manage",        # upload releases, start/halt rollouts and read them (admin; docs/updates.md)
})
GRANTS: dict[str, frozenset[str]] = {
    "admin": ACTIONS,
    "operator": _READ | frozenset({"alarm.ack", "alarm.assign", "alarm.resolve", "broadcast.create",
                                   "broadcast.emergency", "broadcast.cancel", "broadcast.resend", "fence.edit",
                                   "fence.push"}),
    "reviewer": _READ | frozenset({"broadcast.approve", "broadcast.cancel"}),
    "viewer": _READ,
    # 网格员: sees and handles the alarms assigned to them (the routes filter on assigned_to), and boxes
    "gridworker": frozenset({"alarms.read", "alarm.ack", "alarm.resolve", "boxes.read", "events.read",
                             "fences.read"}),
}


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    scope: str | None = None          # a township or village id; None = the whole county
    display_name: str | None = None
    phone: str | None = None
    via: str = "bearer"               # how this request authenticated: "bearer" | "cookie"
    csrf: str = ""
    expires_at: int = 0               # the session's expiry, epoch ms

    @property
    def only_assigned(self) -> bool:
        """A gridworker sees and handles only the alarms assigned to them."""
        return self.role == "gridworker"

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "scope": self.scope, "display_name": self.display_name,
                "phone": self.phone}


# ------------------------------------------------------------------------------------------- policy
def allowed(user: User, action: str, region: str | None = None, regions: Any = None) -> bool:
    """Whether `user` may do `action` in `region` (a township or village id; None: no particular region, a
    role check only). A scoped user may act inside their scope only: a village inside their township, or
    their village itself; the county's own id is the whole county, for county-wide users only."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} (county/server/auth.py ACTIONS)")
    if action not in GRANTS.get(user.role, frozenset()):
        return False
    if region is None or user.scope is None:
        return True
    if regions is None:
        return region == user.scope
    return bool(regions.region_within(region, user.scope))


def current_user(request: Request) -> User | None:
    user = request.scope.get("state", {}).get("user")
    return user if isinstance(user, User) else None


def require_user(request: Request) -> User:
    """The user of this request; HTTPException 401 without one."""
    user = current_user(request)
    if user is None:
        raise HTTPException(401, "not logged in: POST /api/v1/session, then a Bearer token or the cookie")
    return user


def require(request: Request, action: str, region: str | None = None) -> User:
    """The user of this request if `allowed`; else HTTPException 401 (no session) or 403 (refused)."""
    user = require_user(request)
    regions = getattr(request.app.state, "regions", None)
    if not allowed(user, action, region, regions):
        where = f" in {region}" if region is not None else ""
        raise HTTPException(403, f"{user.role} {user.name!r} may not {action}{where}")
    return user


def boxes_outside(user: User, boxes: Iterable[str], regions: Any) -> list[str]:
    """The boxes (sorted) outside the user's scope; unregistered boxes are outside every township/village."""
    if user.scope is None:
        return []
    return sorted(b for b in boxes if regions is None or not regions.in_scope(b, user.scope))


# ------------------------------------------------------------------------------------------- passwords
_hasher: Any = None


def _ph() -> Any:
    global _hasher
    if _hasher is None:
        from argon2 import PasswordHasher

        _hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
    return _hasher


def hash_password(password: str) -> str:
    return str(_ph().hash(password))


_DUMMY_HASH: str | None = None


def verify_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored`; with stored None (no such user) it verifies a dummy hash, so
    the time taken does not tell which user names exist."""
    from argon2.exceptions import InvalidHashError, VerificationError

    global _DUMMY_HASH
    if stored is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
        stored, password = _DUMMY_HASH, password + "\x00not-this"
    try:
        return bool(_ph().verify(stored, password))
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_async(stored: str | None, password: str) -> bool:
    return await asyncio.to_thread(verify_password, stored, password)


# ------------------------------------------------------------------------------------------- tokens
def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_ok(user: User, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(user.csrf.encode(), (header or "").encode("utf-8", "replace"))


# ------------------------------------------------------------------------------------------- rate limit
class LoginLimiter:
    """Failed logins per key (("user", name) and ("addr", host)) in a sliding window; in memory, per instance.

    At most `max_keys` keys are tracked; past that the ones whose failures have all expired are dropped,
    then the oldest, so a flood of distinct names cannot grow it without bound.
    """

    def __init__(self, max_failures: int, window_s: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        q = self._failures.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._failures[key]
            return None
        return q

    def retry_after(self, keys: Iterable[tuple[str, str]]) -> float | None:
        """Seconds until a login may be tried again, or None when it may be tried now."""
        now = self.clock()
        waits = []
        for key in keys:
            q = self._recent(key, now)
            if q is not None and len(q) >= self.max_failures:
                waits.append(q[-self.max_failures] + self.window - now)
        return max(waits) if waits else None

    def failed(self, keys: Iterable[tuple[str, str]]) -> None:
        now = self.clock()
        for key in keys:
            q = self._recent(key, now)
            if q is None:
                if len(self._failures) >= self.max_keys:
                    self._prune(now)
                q = self._failures[key] = deque(maxlen=self.max_failures)
            q.append(now)

    def succeeded(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        while len(self._failures) >= self.max_keys:
            oldest = min(self._failures, key=lambda k: self._failures[k][-1])
            del self._failures[oldest]

    async def aretry_after(self, keys: Iterable[tuple[str, str]]) -> float | None:
        return self.retry_after(keys)

    async def afailed(self, keys: Iterable[tuple[str, str]]) -> None:
        self.failed(keys)

    async def asucceeded(self, key: tuple[str, str]) -> None:
        self.succeeded(key)


def _limit_key(key: tuple[str, str]) -> str:
    return f"{key[0]}:{key[1]}"[:300]


class DbLoginLimiter:
    """LoginLimiter's rule over the `login_failures` table: N server instances on one database share the
    limit (an attacker gains nothing by spreading guesses over them). `clock` is epoch ms (the app's).

    Each failure is one row (key "user:NAME" or "addr:HOST", ts); a success deletes the user's rows; each
    failure also deletes the rows past the window (by the ts index), so the table holds at most the
    failures of the last `window_s` seconds."""

    def __init__(self, db: Any, max_failures: int, window_s: float, *, clock: Callable[[], int]) -> None:
        self.db = db
        self.max_failures = max_failures
        self.window_ms = int(window_s * 1000)
        self.clock = clock

    async def aretry_after(self, keys: Iterable[tuple[str, str]]) -> float | None:
        now = self.clock()
        waits = []
        async with self.db.connect() as conn:
            for key in keys:
                recent = [r[0] for r in (await conn.execute(
                    select(_lf.c.ts).where(_lf.c.key == _limit_key(key), _lf.c.ts > now - self.window_ms)
                    .order_by(_lf.c.ts.desc()).limit(self.max_failures))).all()]
                if len(recent) >= self.max_failures:
                    waits.append((recent[-1] + self.window_ms - now) / 1000)
        return max(waits) if waits else None

    async def afailed(self, keys: Iterable[tuple[str, str]]) -> None:
        now = self.clock()
        async with self.db.begin() as conn:
            await conn.execute(delete(_lf).where(_lf.c.ts <= now - self.window_ms))
            await conn.execute(insert(_lf), [{"key": _limit_key(k), "ts": now} for k in keys])

    async def asucceeded(self, key: tuple[str, str]) -> None:
        async with self.db.begin() as conn:
            await conn.execute(delete(_lf).where(_lf.c.key == _limit_key(key)))
