"""Users, sessions, CSRF, the login rate limit and the role/scope policy, through real HTTP into the ASGI app
over a real database (SQLite and PostgreSQL: the `db_url` fixture); `village county user add` as a process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from county.regions import load_regions
from county.server import auth, routes_session, users
from county.server.app import create_app, route_modules
from county.server.config import parse_config
from county.store.db import Database
from county.store.tables import audit as audit_t
from county.store.tables import sessions as sessions_t
from county.store.tables import users as users_t

REPO = Path(__file__).resolve().parents[1]
REGIONS = load_regions(REPO / "county" / "regions.example.toml")
PASSWORD = "correct horse battery"
HOUR_MS = 3600 * 1000


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


async def _probe(request: Request) -> JSONResponse:
    user = auth.require(request, "broadcast.create", request.path_params["region"])
    return JSONResponse({"ok": True, "user": user.name})


PROBE = types.ModuleType("probe_routes")
PROBE.routes = lambda: [Route("/api/v1/probe/{region}", _probe, methods=["POST"])]  # type: ignore[attr-defined]


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    d = await Database.open(db_url)
    try:
        yield d
    finally:
        await d.close()


def make_app(db: Database, clock: Clock, **server: Any) -> Any:
    config = parse_config({"server": server} if server else {})
    return create_app(config, db, regions=REGIONS, clock=clock, modules=[routes_session, PROBE])


def client(app: Any, addr: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(addr, 40000)),
                             base_url="http://county.test")


async def add(db: Database, name: str = "li", role: str = "operator", scope: str | None = None) -> None:
    await users.add_user(db, name, role, scope, PASSWORD, actor="test")


async def login(c: httpx.AsyncClient, name: str = "li", password: str = PASSWORD) -> httpx.Response:
    return await c.post("/api/v1/session", json={"username": name, "password": password})


async def audit_actions(db: Database) -> list[tuple[str, str]]:
    async with db.connect() as conn:
        return [(r.actor, r.action) for r in await conn.execute(select(audit_t).order_by(audit_t.c.seq))]


async def test_login_gives_a_token_whose_hash_alone_is_stored(db: Database) -> None:
    await add(db)
    async with client(make_app(db, Clock())) as c:
        r = await login(c)
        assert r.status_code == 200, r.text
        body = r.json()
        token = body["token"]
        assert body["user"] == {"name": "li", "role": "operator", "scope": None, "display_name": None, "phone": None}
        assert body["expires_at"] == Clock().now + 12 * HOUR_MS
        cookie = r.headers["set-cookie"]
        assert f"{auth.COOKIE}={token}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback
        me = await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["user"]["name"] == "li" and me.json()["csrf"] == body["csrf"]
    async with db.connect() as conn:
        rows = (await conn.execute(select(sessions_t))).mappings().all()
        stored = (await conn.execute(select(users_t.c.password_hash))).scalar_one()
    assert [r["token_hash"] for r in rows] == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in repr([dict(r) for r in rows])
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert await audit_actions(db) == [("test", "user.add"), ("li", "login")]


async def test_cookie_is_secure_with_tls(db: Database, tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    await add(db)
    app = make_app(db, Clock(), listen="0.0.0.0:8443", tls_cert=str(tmp_path / "cert.pem"),
                   tls_key=str(tmp_path / "key.pem"))
    async with client(app) as c:
        r = await login(c)
    assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]


async def test_bad_credentials_are_401_and_audited(db: Database) -> None:
    await add(db)
    await add(db, "gone", "viewer")
    async with db.begin() as conn:
        await conn.execute(update(users_t).where(users_t.c.name == "gone").values(disabled=True))
    async with client(make_app(db, Clock())) as c:
        answers = [await login(c, "li", "wrong password"), await login(c, "nobody"), await login(c, "gone"),
                   await login(c, "bad\nname")]
    assert [a.status_code for a in answers] == [401] * 4
    assert len({a.text for a in answers}) == 1  # the same answer whichever way it failed
    assert answers[0].json() == {"error": "unauthorized", "detail": "wrong user name or password"}
    async with db.connect() as conn:
        assert (await conn.execute(select(sessions_t))).first() is None
        failed = (await conn.execute(select(audit_t).where(audit_t.c.action == "login.failed")
                                     .order_by(audit_t.c.seq))).mappings().all()
    assert [(f["actor"], f["action"]) for f in failed] == [("li", "login.failed"), ("nobody", "login.failed"),
                                                          ("gone", "login.failed"), ("?", "login.failed")]
    assert '"reason":"wrong password"' in failed[0]["detail"] and '"reason":"disabled"' in failed[2]["detail"]
    assert all(PASSWORD not in f["detail"] for f in failed)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"username": "li"}', b'{"username": "li", "password": 5}',
                                  b'{"username": "li", "password": "x", "otp": 1}', b"\xff\xfe"])
async def test_malformed_login_is_400(db: Database, body: bytes) -> None:
    async with client(make_app(db, Clock())) as c:
        r = await c.post("/api/v1/session", content=body)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


async def test_every_other_route_needs_a_session(db: Database) -> None:
    await add(db)
    async with client(make_app(db, Clock())) as c:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic bGk6eA=="},
                        {"Authorization": "Bearer " + "x" * 5000}):
            r = await c.get("/api/v1/me", headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (headers, r.text)
        r = await c.post("/api/v1/probe/menglou")
        assert r.status_code == 401
        r = await c.get("/api/v1/no-such-route")
        assert r.status_code == 401  # not even a 404 tells what exists
        assert (await c.get("/api/v1/health")).json() == {"ok": True}


async def test_login_rate_limit_per_user(db: Database) -> None:
    await add(db)
    clock = Clock()
    async with client(make_app(db, clock)) as c:
        for _ in range(5):
            assert (await login(c, password="guess")).status_code == 401
        r = await login(c)  # even the right password: the limit is reached
        assert r.status_code == 429 and r.json()["error"] == "too_many_requests"
        assert r.headers["Retry-After"] == "300"
        clock.now += 299_000
        assert (await login(c)).status_code == 429
        clock.now += 1_000
        assert (await login(c)).status_code == 200
    # the refused attempts are not audited; the checked ones are
    assert [a for _u, a in await audit_actions(db)].count("login.failed") == 5


async def test_login_rate_limit_per_address(db: Database) -> None:
    await add(db)
    app = make_app(db, Clock())
    async with client(app, "10.0.0.7") as attacker:
        for i in range(5):
            assert (await login(attacker, f"user{i}", "guess")).status_code == 401
        assert (await login(attacker)).status_code == 429
    async with client(app, "10.0.0.8") as office:
        assert (await login(office)).status_code == 200


async def test_login_rate_limit_tracks_a_bounded_number_of_keys() -> None:
    t = [0.0]
    limiter = auth.LoginLimiter(2, 60, max_keys=100, clock=lambda: t[0])
    for i in range(1000):
        limiter.failed([("user", f"u{i}")])
    assert len(limiter._failures) <= 100
    limiter.failed([("user", "x")])
    limiter.failed([("user", "x")])
    assert limiter.retry_after([("user", "x")]) == 60
    t[0] = 61
    assert limiter.retry_after([("user", "x")]) is None


async def test_sessions_expire(db: Database) -> None:
    await add(db)
    clock = Clock()
    async with client(make_app(db, clock, session_hours=1)) as c:
        token = (await login(c)).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        clock.now += HOUR_MS - 1
        assert (await c.get("/api/v1/me", headers=bearer)).status_code == 200
        clock.now += 1
        r = await c.get("/api/v1/me", headers=bearer)
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        assert (await c.get("/api/v1/me")).status_code == 401  # the cookie is the same session
        await login(c)  # a login clears expired sessions
    async with db.connect() as conn:
        assert len((await conn.execute(select(sessions_t))).all()) == 1


async def test_cookie_writes_need_the_csrf_token(db: Database) -> None:
    await add(db)
    async with client(make_app(db, Clock())) as c:
        csrf = (await login(c)).json()["csrf"]
        assert (await c.get("/api/v1/me")).status_code == 200  # a read with the cookie: no token needed
        for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
            r = await c.post("/api/v1/probe/menglou", headers=headers)
            assert r.status_code == 403 and r.json()["error"] == "csrf", r.text
            r = await c.delete("/api/v1/session", headers=headers)
            assert r.status_code == 403 and r.json()["error"] == "csrf"
        assert (await c.post("/api/v1/probe/menglou", headers={"X-CSRF-Token": csrf})).status_code == 200
        assert [a for _u, a in await audit_actions(db)].count("denied") == 6  # each refusal, attributed
        r = await c.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
        assert (await c.get("/api/v1/me")).status_code == 401  # logged out
    assert ("li", "logout") in await audit_actions(db)


async def test_bearer_writes_need_no_csrf_token(db: Database) -> None:
    await add(db)
    async with client(make_app(db, Clock())) as c:
        token = (await login(c)).json()["token"]
    async with client(make_app(db, Clock())) as script:  # no cookie jar: a script
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await script.post("/api/v1/probe/menglou", headers=bearer)).status_code == 200
        assert (await script.delete("/api/v1/session", headers=bearer)).status_code == 200
        assert (await script.get("/api/v1/me", headers=bearer)).status_code == 401


async def test_scope_limits_what_a_user_may_target(db: Database) -> None:
    await add(db, "town-op", "operator", "menglou-town")
    await add(db, "county-op", "operator", None)
    await add(db, "look", "viewer", None)
    async with client(make_app(db, Clock())) as c:
        tokens = {n: (await login(c, n)).json()["token"] for n in ("town-op", "county-op", "look")}

        async def probe(name: str, region: str) -> httpx.Response:
            return await c.post(f"/api/v1/probe/{region}", headers={"Authorization": f"Bearer {tokens[name]}"})

        assert (await probe("town-op", "menglou-town")).status_code == 200
        assert (await probe("town-op", "menglou")).status_code == 200   # a village of its township
        r = await probe("town-op", "sim-town")                          # another township
        assert r.status_code == 403
        assert r.json() == {"error": "forbidden",
                            "detail": "operator 'town-op' may not broadcast.create in sim-town"}
        assert (await probe("town-op", "menghai")).status_code == 403   # the whole county
        assert (await probe("county-op", "sim-village")).status_code == 200
        r = await probe("look", "menglou")
        assert r.status_code == 403 and "viewer 'look' may not broadcast.create" in r.json()["detail"]
    async with db.connect() as conn:
        denied = (await conn.execute(select(audit_t).where(audit_t.c.action == "denied")
                                     .order_by(audit_t.c.seq))).mappings().all()
    assert [(d["actor"], d["target"]) for d in denied] == [
        ("town-op", "/api/v1/probe/sim-town"), ("town-op", "/api/v1/probe/menghai"), ("look", "/api/v1/probe/menglou")]
    assert all(d["detail"] == '{"method":"POST","why":"forbidden"}' for d in denied)


ROLE_EXPECT = {
    "admin": {"user.manage": True, "broadcast.create": True, "broadcast.approve": True, "audit.read": True},
    "operator": {"broadcast.create": True, "broadcast.emergency": True, "broadcast.approve": False,
                 "alarm.assign": True, "fence.push": True, "user.manage": False, "boxes.read": True},
    "reviewer": {"broadcast.approve": True, "broadcast.create": False, "alarm.ack": False, "boxes.read": True},
    "viewer": {"boxes.read": True, "alarms.read": True, "broadcast.create": False, "alarm.ack": False,
               "broadcast.cancel": False},
    "gridworker": {"alarms.read": True, "alarm.resolve": True, "alarm.assign": False, "broadcast.create": False,
                   "messages.read": False},
}


@pytest.mark.parametrize("role", auth.ROLES)
def test_policy_roles(role: str) -> None:
    user = auth.User(name="u", role=role)
    for action, expected in ROLE_EXPECT[role].items():
        assert auth.allowed(user, action) is expected, (role, action)
    assert user.only_assigned is (role == "gridworker")
    scoped = auth.User(name="u", role=role, scope="menglou")
    assert auth.allowed(scoped, "alarms.read", "sim-village", REGIONS) is False
    assert auth.allowed(scoped, "alarms.read", "menglou", REGIONS) is True
    assert auth.allowed(scoped, "alarms.read", "menglou-town", REGIONS) is False  # wider than the scope
    with pytest.raises(ValueError, match="unknown action"):
        auth.allowed(user, "alarm.acknowledge")


def test_boxes_outside_a_scope() -> None:
    town = auth.User(name="u", role="operator", scope="menglou-town")
    assert auth.boxes_outside(town, ["lhk-menglou-001", "sim-power-001", "stranger"], REGIONS) == \
        ["sim-power-001", "stranger"]
    assert auth.boxes_outside(auth.User(name="u", role="operator"), ["stranger"], REGIONS) == []


async def test_changing_a_user_ends_their_sessions(db: Database) -> None:
    await add(db)
    async with client(make_app(db, Clock())) as c:
        token = (await login(c)).json()["token"]
        await users.add_user(db, "li", "viewer", "menglou", PASSWORD + "2", actor="admin", update_existing=True)
        assert (await c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
        assert (await login(c)).status_code == 401
        r = await login(c, password=PASSWORD + "2")
        assert r.json()["user"]["role"] == "viewer" and r.json()["user"]["scope"] == "menglou"
    with pytest.raises(users.UserExists):
        await add(db)


async def test_disabling_a_user_ends_their_sessions(db: Database) -> None:
    await add(db)
    async with client(make_app(db, Clock())) as c:
        token = (await login(c)).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await c.get("/api/v1/me", headers=bearer)).status_code == 200
        async with db.begin() as conn:
            await conn.execute(update(users_t).where(users_t.c.name == "li").values(disabled=True))
        assert (await c.get("/api/v1/me", headers=bearer)).status_code == 401


async def test_a_body_over_the_limit_is_413(db: Database) -> None:
    await add(db)
    async with client(make_app(db, Clock(), max_body_bytes=1000)) as c:
        r = await c.post("/api/v1/session", content=b"{" + b" " * 2000 + b"}")
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        assert (await login(c)).status_code == 200


def test_routes_session_is_mounted_first() -> None:
    names = [m.__name__ for m in route_modules()]
    assert names[0] == "county.server.routes_session"
    assert "county.server.routes_common" not in names


# ------------------------------------------------------------------------------------------ the CLI
def county_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "county", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def config_file(tmp_path: Path, db_url: str) -> Path:
    p = tmp_path / "county.toml"
    p.write_text(f'[database]\nurl = "{db_url}"\n[county]\nregions = "{REPO / "county/regions.example.toml"}"\n',
                 encoding="utf-8")
    return p


async def test_user_add_then_login(db_url: str, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, db_url)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")  # one trailing newline, as `echo` writes it
    r = county_cli("user", "add", "zhang", "--role", "operator", "--scope", "menglou-town", "--password-file",
                   str(pw), "--display-name", "张伟", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    async with await Database.open(db_url) as db:
        async with client(make_app(db, Clock())) as c:
            got = await login(c, "zhang")
            assert got.status_code == 200, got.text
            assert got.json()["user"] == {"name": "zhang", "role": "operator", "scope": "menglou-town",
                                          "display_name": "张伟", "phone": None}
            assert (await login(c, "zhang", PASSWORD + "\n")).status_code == 401
        async with db.connect() as conn:
            detail = (await conn.execute(select(audit_t.c.detail).where(audit_t.c.action == "user.add"))).scalar()
        assert detail is not None and PASSWORD not in detail

    again = county_cli("user", "add", "zhang", "--role", "viewer", "--password-file", str(pw), "-c", str(cfg))
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "exists" in again.stderr
    updated = county_cli("user", "add", "zhang", "--role", "viewer", "--password-file", str(pw), "--update",
                         "-c", str(cfg))
    assert updated.returncode == 0, updated.stderr
    listed = county_cli("user", "list", "-c", str(cfg))
    assert listed.stdout.splitlines() == ["zhang\tviewer\t-"]


@pytest.mark.parametrize(("args", "message"), [
    (["--role", "boss"], "invalid choice: 'boss'"),
    (["--role", "operator", "--scope", "atlantis"], "scope 'atlantis' is not a township or village id"),
    (["--role", "operator", "--password-file", "/nonexistent"], "cannot read"),
])
def test_user_add_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    cfg = config_file(tmp_path, f"sqlite:///{tmp_path}/county.db")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    if "--password-file" not in args:
        args = [*args, "--password-file", str(pw)]
    r = county_cli("user", "add", "wang", *args, "-c", str(cfg))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_user_add_refuses_short_or_empty_passwords(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, f"sqlite:///{tmp_path}/county.db")
    for text, message in (("\n", "empty"), ("short\n", "shorter than 8")):
        pw = tmp_path / "pw"
        pw.write_text(text)
        r = county_cli("user", "add", "wang", "--role", "viewer", "--password-file", str(pw), "-c", str(cfg))
        assert r.returncode == 2 and message in r.stderr, r.stderr
    r = county_cli("user", "add", "bad name", "--role", "viewer", "--password-file", str(pw), "-c", str(cfg))
    assert r.returncode == 2 and "is not [A-Za-z0-9_.@-]" in r.stderr


async def test_two_instances_on_one_database_share_the_login_limit(db: Database, db_url: str) -> None:
    """Two server instances (two apps, each with its own engine) on one database: 3 guesses on one and 2 on
    the other reach the limit of 5 on both; a success on either clears the user's count for both."""
    await add(db)
    clock = Clock()
    async with await Database.open(db_url) as db2:
        a, b = make_app(db, clock), make_app(db2, clock)
        async with client(a, "10.0.0.1") as ca, client(b, "10.0.0.2") as cb:
            for _ in range(3):
                assert (await login(ca, password="guess")).status_code == 401
            for _ in range(2):
                assert (await login(cb, password="guess")).status_code == 401
            for c in (ca, cb):  # the right password, on either instance: the user's limit is reached
                r = await login(c)
                assert r.status_code == 429 and r.headers["Retry-After"] == "300"
            clock.now += 300_000
            assert (await login(cb)).status_code == 200
            assert (await login(ca, password="guess")).status_code == 401  # counting starts again, shared
            for _ in range(3):
                assert (await login(cb, password="guess")).status_code == 401
            assert (await login(ca)).status_code == 200  # 4 failures since the success: not yet limited
