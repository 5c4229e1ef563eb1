"""A county server for the API tests: the real app (create_app) over a real database (the `db_url`
fixture: SQLite and PostgreSQL), a real EventHub, the real Publisher on a real mosquitto, a regions file
with two townships, and one logged-in session per role.

Sessions are made with users.create_session (the real table the auth middleware reads); the users' rows
share one argon2 hash computed once, so the tests do not spend seconds hashing. test_login_through_the_api
logs in through POST /api/v1/session as well.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import insert, select

from county.regions import Regions, parse_regions
from county.server.app import create_app
from county.server.auth import hash_password
from county.server.config import parse_config
from county.server.events import EventHub
from county.server.publish import Publisher
from county.server.users import create_session
from county.store import Database
from county.store.tables import alarms, audit, boxes, receipts, users
from tests.support import Collector, Mosquitto

KID = "county-test"
PASSWORD = "correct horse battery"
# 2026-12-01 08:00 UTC = 16:00 in Asia/Shanghai: the app's clock in these tests
NOW_MS = int(dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC).timestamp() * 1000)

REGIONS = {
    "county": {"id": "menghai", "name": "勐海县"},
    "township": [
        {"id": "town-a", "name": "甲镇", "village": [
            {"id": "va1", "name": "甲一村", "box": [{"id": "a1", "name": "甲一村委会", "groups": ["town-a"]}]},
            {"id": "va2", "name": "甲二村", "box": [{"id": "a2", "name": "甲二村委会", "groups": ["town-a"]}]},
        ]},
        {"id": "town-b", "name": "乙镇", "village": [
            {"id": "vb1", "name": "乙一村", "box": [{"id": "b1", "name": "乙一村委会", "groups": ["town-b"]}]},
        ]},
    ],
}

# name -> (role, scope)
USERS = {
    "admin": ("admin", None),
    "operator": ("operator", None),
    "reviewer": ("reviewer", None),
    "viewer": ("viewer", None),
    "gw-a": ("gridworker", "town-a"),
    "op-a": ("operator", "town-a"),
    "gw-b": ("gridworker", "town-b"),
    "rev-a": ("reviewer", "town-a"),
}
ROLES = ("admin", "operator", "reviewer", "viewer", "gridworker")
ROLE_USER = {"admin": "admin", "operator": "operator", "reviewer": "reviewer", "viewer": "viewer",
             "gridworker": "gw-a"}

_HASH: list[str] = []


def password_hash() -> str:
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    return _HASH[0]


@dataclass
class Env:
    app: Any
    db: Database
    hub: EventHub
    publisher: Publisher
    broker: Mosquitto
    regions: Regions
    public_key: Ed25519PublicKey
    client: httpx.AsyncClient
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def get(self, user: str | None, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(user) if user else {}, **kw)

    async def post(self, user: str | None, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.auth(user) if user else {},
                                      json=body if body is not None else {}, **kw)

    async def rows(self, table: Any, *where: Any) -> list[dict[str, Any]]:
        async with self.db.connect() as conn:
            return [dict(r) for r in (await conn.execute(select(table).where(*where))).mappings()]

    async def insert(self, table: Any, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
        async with self.db.begin() as conn:
            await conn.execute(insert(table), rows if isinstance(rows, list) else [rows])

    async def audit_rows(self, action: str | None = None) -> list[dict[str, Any]]:
        rows = await self.rows(audit)
        return [r | {"detail": json.loads(r["detail"])} for r in rows if action is None or r["action"] == action]

    async def add_alarm(self, alarm_id: str, box: str, *, ts: int = NOW_MS - 60_000, received: int | None = None,
                        state: str = "new", kind: str = "sos", **extra: Any) -> None:
        await self.insert(alarms, {"id": alarm_id, "box": box, "kind": kind, "wearer": "w-1", "device": "d-1",
                                   "ts": ts, "received": received if received is not None else ts,
                                   "pos": {"lat": 21.9, "lon": 101.2}, "data": {"wearer": "w-1"},
                                   "state": state, **extra})

    async def add_receipt(self, cmd: str, box: str, state: str, reason: str | None = None, ts: int = NOW_MS) -> None:
        await self.insert(receipts, {"cmd": cmd, "box": box, "state": state, "reason": reason, "ts": ts,
                                     "envelope": f"{box}:{ts}"})


def config_for(tmp: Path, broker_url: str, **sections: dict[str, Any]) -> Any:
    key = Ed25519PrivateKey.generate()
    key_path = tmp / "county.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    raw: dict[str, Any] = {"mqtt": {"url": broker_url}, "signing": {"key": str(key_path), "kid": KID},
                           "county": {"timezone": "Asia/Shanghai"}}
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return parse_config(raw, tmp / "county.toml"), key.public_key()


async def open_env(db_url: str, broker: Mosquitto, tmp: Path, **sections: dict[str, Any]) -> Env:
    config, public = config_for(tmp, broker.url, **sections)
    db = await Database.open(db_url)
    regions = parse_regions(REGIONS)
    hub = EventHub()
    publisher = Publisher(list(config.mqtt.urls), client_id="county-test-pub")
    await publisher.start()
    app = create_app(config, db, hub, publisher, regions=regions, clock=lambda: NOW_MS)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://county.test")
    env = Env(app, db, hub, publisher, broker, regions, public, client)
    pw = password_hash()
    async with db.begin() as conn:
        await conn.execute(insert(users), [{"name": n, "role": r, "scope": s, "password_hash": pw,
                                            "phone": f"1380000{i:04d}", "disabled": False, "created_at": NOW_MS}
                                           for i, (n, (r, s)) in enumerate(USERS.items())])
        for name in USERS:
            env.tokens[name] = (await create_session(conn, name, NOW_MS, 3_600_000)).token
        # the boxes as ingest would have stored them (a1, a2 in town-a, b1 in town-b, and one unregistered)
        await conn.execute(insert(boxes), [
            {"id": "a1", "state": "online", "groups": ["town-a"], "first_seen": NOW_MS - 10**6,
             "last_seen": NOW_MS - 1000, "backlog": 0, "version": "1.4.0"},
            {"id": "a2", "state": "offline", "groups": ["town-a"], "first_seen": NOW_MS - 10**6,
             "last_seen": NOW_MS - 10**5, "backlog": 12, "version": "1.4.0"},
            {"id": "b1", "state": "online", "groups": ["town-b"], "first_seen": NOW_MS - 10**6,
             "last_seen": NOW_MS - 2000, "backlog": 0, "version": "1.3.9"},
            {"id": "stray-9", "state": "online", "groups": ["lab"], "first_seen": NOW_MS - 10**6,
             "last_seen": NOW_MS - 3000, "backlog": 3, "version": "1.4.1"},
        ])
    return env


async def close_env(env: Env) -> None:
    await env.client.aclose()
    env.hub.close()
    await env.publisher.close()
    await env.db.close()


@pytest.fixture(name="env")
async def env_fixture(db_url: str, broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Env]:
    e = await open_env(db_url, broker, tmp_path)
    try:
        yield e
    finally:
        await close_env(e)


@pytest.fixture(name="review_env")
async def review_env_fixture(db_url: str, broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Env]:
    e = await open_env(db_url, broker, tmp_path, review={"daily": True})
    try:
        yield e
    finally:
        await close_env(e)


def box_side(broker: Mosquitto) -> Collector:
    """What the boxes would receive: every box and group cmd topic."""
    return Collector(broker.url, topics=("vc/v1/box/+/cmd", "vc/v1/group/+/cmd")).start()


async def wait_messages(collector: Collector, n: int, timeout: float = 10.0) -> list[Any]:
    return await asyncio.to_thread(collector.wait_for, lambda msgs: msgs if len(msgs) >= n else None, timeout)


