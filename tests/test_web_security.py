"""The console's security headers and login cookie through the real app (ASGI), on a server speaking TLS:
the session cookie the login form hands over is HttpOnly, SameSite=Strict and Secure, HSTS is sent, and the
CSP (no inline script, no framing) is on pages, static files, API answers and errors alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from county.server.app import create_app
from county.server.config import parse_config
from county.store import Database
from county.web.security import content_security_policy
from tests.county_api import REGIONS
from tests.pki import TestCA


@pytest.fixture(name="tls_client")
async def tls_client_fixture(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    from sqlalchemy import insert

    from county.regions import parse_regions
    from county.server.auth import hash_password
    from county.store.tables import users

    issued = TestCA(tmp_path / "ca").server("localhost")
    config = parse_config({"server": {"listen": "127.0.0.1:8443", "tls_cert": str(issued.cert),
                                      "tls_key": str(issued.key)},
                           "database": {"url": f"sqlite:///{tmp_path / 'county.db'}"}}, tmp_path / "county.toml")
    assert config.server.tls
    db = await Database.open(config.database.url)
    async with db.begin() as conn:
        await conn.execute(insert(users), {"name": "li", "role": "viewer", "password_hash": hash_password("pw-long-1"),
                                           "disabled": False, "created_at": 0})
    app = create_app(config, db, regions=parse_regions(REGIONS))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://county.test") as client:
        yield client
    await db.close()


async def test_the_login_forms_cookie_is_secure_over_tls(tls_client: httpx.AsyncClient) -> None:
    r = await tls_client.post("/login", data={"username": "li", "password": "pw-long-1", "next": "/boxes"})
    assert r.status_code == 303 and r.headers["location"] == "/boxes"
    cookie = r.headers["set-cookie"].lower()
    assert "vc_session=" in cookie and "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    assert "strict-transport-security" in r.headers
    assert r.cookies["vc_session"] not in r.text


async def test_every_kind_of_response_carries_the_policy(tls_client: httpx.AsyncClient) -> None:
    for path, status in (("/login", 200), ("/", 303), ("/static/css/console.css", 200), ("/static/nope.js", 404),
                         ("/api/v1/health", 200), ("/api/v1/boxes", 401), ("/no-such-page", 404),
                         ("/i18n/zh_CN.json", 200), ("/i18n/fr.json", 404)):
        r = await tls_client.get(path, follow_redirects=False)
        assert r.status_code == status, path
        assert r.headers["content-security-policy"] == content_security_policy(), path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY", path
    assert "frame-ancestors 'none'" in content_security_policy()
    assert "script-src 'self';" in content_security_policy()


def test_the_policy_never_lets_scripts_from_elsewhere() -> None:
    extra = content_security_policy({"img-src": ["https://t0.tianditu.gov.cn"]})
    assert "img-src 'self' data: blob: https://t0.tianditu.gov.cn" in extra
    with pytest.raises(ValueError, match="script-src"):
        content_security_policy({"script-src": ["https://cdn.example"]})
