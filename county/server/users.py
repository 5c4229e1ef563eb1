"""Users and sessions in the database (tables `users`, `sessions`); every change is audited.

A user name is `[A-Za-z0-9_.@-]{1,64}`; the display name (Chinese welcome) and phone are free text.
Passwords come from a file (`--password-file`), never from the command line or the environment, and are
stored as argon2id hashes only.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update

from agent.i18n import N_
from county.server import audit
from county.server.auth import ROLES, User, hash_password, new_token, token_hash
from county.store.tables import sessions, users

USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


class UserError(ValueError):
    """Input that cannot make a user (a bad name, role, scope or password); `str()` is one line."""


class UserExists(Exception):
    pass


class NoSuchUser(Exception):
    pass


def now_ms() -> int:
    return int(time.time() * 1000)


def check_name(name: str) -> str:
    if not USER_RE.match(name):
        raise UserError(N_("user name {name!r} is not [A-Za-z0-9_.@-]{{1,64}}", name=name[:80]))
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(N_("role {role!r} is not one of {roles}", role=role[:40], roles=', '.join(ROLES)))
    return role


def check_scope(scope: str | None, regions: Any) -> str | None:
    """A township or village id of the regions file; None or the county's id: the whole county."""
    if scope is None or scope == regions.county_id:
        return None
    if not regions.has_scope(scope):
        known = ", ".join(sorted(r.id for r in regions.scopes() if r.kind != "county")[:12]) or "none"
        raise UserError(N_("scope {scope!r} is not a township or village id of the regions file (known: {known})",
                           scope=scope[:80], known=known))
    return scope


def check_text(what: str, value: str | None, most: int) -> str | None:
    if value is None:
        return None
    if len(value) > most or _BAD_TEXT.search(value):
        raise UserError(N_("{what} must be at most {most} printable characters", what=what, most=most))
    return value


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(N_("the password is shorter than {min_password} characters", min_password=MIN_PASSWORD))
    if len(password) > MAX_PASSWORD:
        raise UserError(N_("the password is longer than {max_password} characters", max_password=MAX_PASSWORD))
    return password


def read_password_file(path: Path) -> str:
    """The file's text without one trailing newline (`\\n` or `\\r\\n`); its content is never shown."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PASSWORD + 3)
    except OSError as exc:
        raise UserError(N_("--password-file {path}: cannot read: {strerror}",
                           path=path, strerror=exc.strerror)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(N_("--password-file {path}: not UTF-8 text", path=path)) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise UserError(N_("--password-file {path}: empty", path=path))
    return check_password(text)


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    role: str
    scope: str | None
    password_hash: str
    display_name: str | None
    phone: str | None
    disabled: bool
    created_at: int


def _row(r: Any) -> UserRow:
    return UserRow(name=r["name"], role=r["role"], scope=r["scope"], password_hash=r["password_hash"],
                   display_name=r["display_name"], phone=r["phone"], disabled=bool(r["disabled"]),
                   created_at=int(r["created_at"]))


async def get_user(conn: Any, name: str) -> UserRow | None:
    r = (await conn.execute(select(users).where(users.c.name == name))).mappings().first()
    return _row(r) if r is not None else None


async def list_users(conn: Any) -> list[UserRow]:
    return [_row(r) for r in (await conn.execute(select(users).order_by(users.c.name))).mappings()]


async def add_user(db: Any, name: str, role: str, scope: str | None, password: str, *, actor: str,
                   display_name: str | None = None, phone: str | None = None, update_existing: bool = False,
                   now: int | None = None) -> str:
    """Create (or with `update_existing`, change) a user and audit it in one transaction.
    Returns "added" or "updated"; UserExists / NoSuchUser when the name is taken / missing."""
    hashed = hash_password(password)  # before the transaction: argon2 takes a while
    when = now_ms() if now is None else now
    async with db.begin() as conn:
        existing = await get_user(conn, name)
        detail = {"role": role, "scope": scope, "display_name": display_name, "phone": phone}
        if existing is None:
            if update_existing:
                raise NoSuchUser(name)
            await conn.execute(insert(users), {"name": name, "role": role, "scope": scope,
                                               "password_hash": hashed, "display_name": display_name,
                                               "phone": phone, "disabled": False, "created_at": when})
            await audit.append(conn, actor, "user.add", name, detail, ts=when)
            return "added"
        if not update_existing:
            raise UserExists(name)
        values: dict[str, Any] = {"role": role, "scope": scope, "password_hash": hashed, "disabled": False}
        if display_name is not None:
            values["display_name"] = display_name
        if phone is not None:
            values["phone"] = phone
        await conn.execute(update(users).where(users.c.name == name).values(**values))
        # the user's sessions end: a changed role or scope must not ride on an old session
        await conn.execute(delete(sessions).where(sessions.c.user == name))
        await audit.append(conn, actor, "user.update", name, detail | {"sessions_ended": True}, ts=when)
        return "updated"


# ------------------------------------------------------------------------------------------- sessions
@dataclass(frozen=True, slots=True)
class NewSession:
    token: str       # given to the client once; never stored
    csrf: str
    expires_at: int  # epoch ms


async def create_session(conn: Any, name: str, now: int, ttl_ms: int) -> NewSession:
    token, csrf = new_token(), new_token()
    expires = now + ttl_ms
    await conn.execute(delete(sessions).where(sessions.c.expires_at <= now))  # the expired ones, at each login
    await conn.execute(insert(sessions), {"token_hash": token_hash(token), "user": name, "csrf": csrf,
                                          "created_at": now, "expires_at": expires})
    return NewSession(token, csrf, expires)


async def session_user(db: Any, token: str, now: int, via: str) -> User | None:
    """The user of a live session (not expired, user not disabled), or None."""
    stmt = (select(sessions.c.csrf, sessions.c.expires_at, users.c.name, users.c.role, users.c.scope,
                   users.c.display_name, users.c.phone)
            .join(users, users.c.name == sessions.c.user)
            .where(sessions.c.token_hash == token_hash(token), sessions.c.expires_at > now,
                   users.c.disabled.is_(False)))
    async with db.connect() as conn:
        r = (await conn.execute(stmt)).mappings().first()
    if r is None:
        return None
    return User(name=r["name"], role=r["role"], scope=r["scope"], display_name=r["display_name"],
                phone=r["phone"], via=via, csrf=r["csrf"], expires_at=int(r["expires_at"]))


async def end_session(conn: Any, token: str) -> bool:
    result = await conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash(token)))
    return bool(result.rowcount)
