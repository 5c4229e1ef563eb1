"""The boxes' listener of `village county serve` (`[server] box_listen`, `box_client_ca`; docs/updates.md):
release downloads need a box certificate signed by the county CA, checked in the TLS handshake; the
browser port no longer serves them.

A real `village county serve` process with a real mosquitto, a release uploaded over the browser port's
API, then downloads over real TLS with httpx and the box's own fetcher (agent/update/fetch.py)."""

from __future__ import annotations

import hashlib
import signal
import socket
import sqlite3
import ssl
import threading
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.release import Manifest, WheelEntry, sign_manifest
from county.server.config import ConfigError, parse_config
from tests.pki import TestCA
from tests.support import Mosquitto, county_serve, county_user_add, free_port, wait_port, wait_until

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
FILE = "village_edge-2.0.0-py3-none-any.whl"
WHEEL = b"project wheel " * 700


def _config(tmp_path: Path, broker: Mosquitto, server: str) -> Path:
    cfg = tmp_path / "county.toml"
    cfg.write_text(f"""
[server]
{server}
[database]
url = "sqlite:///{tmp_path}/county.db"
[mqtt]
url = "{broker.url}"
client_id = "box-listener-test"
[county]
regions = "{REPO / 'county/regions.example.toml'}"
""", encoding="utf-8")
    return cfg


def _add_admin(cfg: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    county_user_add(cfg, "root", "admin", pw)



def test_box_listen_is_checked_one_line_each(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    issued = ca.server("localhost")
    tls = {"tls_cert": str(issued.cert), "tls_key": str(issued.key)}
    ok = parse_config({"server": {**tls, "box_listen": "127.0.0.1:8443", "box_client_ca": str(ca.pem)}})
    assert ok.server.box_listen == "127.0.0.1:8443" and ok.server.box_port == 8443
    assert parse_config({}).server.box_listen is None  # default: no second port
    bad = [
        ({"box_listen": "127.0.0.1:8443", "box_client_ca": str(ca.pem)}, "server.box_listen", "tls_cert"),
        ({**tls, "box_listen": "127.0.0.1:8443"}, "server.box_client_ca", "box_listen"),
        ({**tls, "box_client_ca": str(ca.pem)}, "server.box_listen", "box_client_ca"),
        ({**tls, "box_listen": "127.0.0.1", "box_client_ca": str(ca.pem)}, "server.box_listen", "host:port"),
        ({**tls, "listen": "127.0.0.1:8443", "box_listen": "127.0.0.1:8443", "box_client_ca": str(ca.pem)},
         "server.box_listen", "listen"),
        ({**tls, "box_listen": "127.0.0.1:8443", "box_client_ca": str(tmp_path / "none.pem")},
         "server.box_client_ca", ""),
    ]
    for server, key, words in bad:
        with pytest.raises(ConfigError) as exc:
            parse_config({"server": server})
        assert exc.value.key == key and words in exc.value.problem, (server, str(exc.value))


def test_a_box_client_ca_that_is_not_a_certificate_exits_2_in_one_line(tmp_path: Path, broker: Mosquitto) -> None:
    ca = TestCA(tmp_path / "ca")
    issued = ca.server("localhost")
    (tmp_path / "ca.pem").write_text("not a certificate")
    cfg = _config(tmp_path, broker, f'listen = "127.0.0.1:{free_port()}"\ntls_cert = "{issued.cert}"\n'
                                    f'tls_key = "{issued.key}"\nbox_listen = "127.0.0.1:{free_port()}"\n'
                                    'box_client_ca = "ca.pem"')
    proc = county_serve(cfg)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{cfg}: server.box_client_ca: cannot load" in lines[0], err


def _refused(client: httpx.Client, url: str) -> None:
    """The TLS handshake fails: with TLS 1.3 the server's alert arrives on the first read."""
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(url)


def test_boxes_download_with_their_certificate_and_the_browser_port_does_not_serve_it(
        tmp_path: Path, broker: Mosquitto) -> None:
    from agent.update.fetch import FetchError, RateLimit, Stats, fetch_file, tls_context

    ca = TestCA(tmp_path / "ca")
    issued = ca.server("localhost")
    port, box_port = free_port(), free_port()
    cfg = _config(tmp_path, broker, f'listen = "127.0.0.1:{port}"\ntls_cert = "{issued.cert}"\n'
                                    f'tls_key = "{issued.key}"\nbox_listen = "127.0.0.1:{box_port}"\n'
                                    f'box_client_ca = "{ca.pem}"')
    _add_admin(cfg, tmp_path)
    proc = county_serve(cfg)
    try:
        wait_port(port, timeout=60)
        wait_port(box_port, timeout=60)
        trust = ssl.create_default_context(cafile=str(ca.pem))
        web = f"https://localhost:{port}"
        with httpx.Client(verify=trust, timeout=10) as browser:
            token = browser.post(f"{web}/api/v1/session", json={"username": "root", "password": PASSWORD}
                                 ).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            m = Manifest("village-edge", "2.0.0", "cp311", "any", "1.0.0", 1, True,
                         (WheelEntry(FILE, hashlib.sha256(WHEEL).hexdigest(), len(WHEEL), True),))
            manifest = sign_manifest(m, Ed25519PrivateKey.generate(), "release-test")
            assert browser.post(f"{web}/api/v1/releases", json={"manifest": manifest}, headers=auth
                                ).status_code == 201
            assert browser.put(f"{web}/api/v1/releases/2.0.0/wheels/{FILE}", content=WHEEL, headers=auth
                               ).json()["complete"]
            # a rollout sent without base_url names the boxes' port of the host it was asked on
            r = browser.post(f"{web}/api/v1/rollouts", json={"version": "2.0.0", "to": ["box:lhk-menglou-001"],
                                                             "force": True}, headers=auth)
            assert r.status_code == 201, r.text
            with sqlite3.connect(tmp_path / "county.db") as db:
                assert db.execute("SELECT url FROM rollouts").fetchall() == [
                    (f"https://localhost:{box_port}/releases/2.0.0/manifest.jws",)]
            # the browser port: not the boxes' files, with or without a session
            assert browser.get(f"{web}/releases/2.0.0/wheels/{FILE}").status_code == 404
            assert browser.get(f"{web}/releases/2.0.0/manifest.jws", headers=auth).status_code == 404

        box = f"https://localhost:{box_port}"
        with httpx.Client(verify=trust, timeout=10) as anonymous:
            _refused(anonymous, f"{box}/releases/2.0.0/manifest.jws")
        stranger = TestCA(tmp_path / "other", "another-ca").client("a1")  # a certificate the county did not sign
        with httpx.Client(verify=tls_context(ca.pem, stranger.cert, stranger.key), timeout=10) as other:
            _refused(other, f"{box}/releases/2.0.0/manifest.jws")

        ident = ca.client("lhk-menglou-001")
        with httpx.Client(verify=tls_context(ca.pem, ident.cert, ident.key), timeout=10) as client:
            r = client.get(f"{box}/releases/2.0.0/manifest.jws")
            assert r.status_code == 200 and r.text == manifest
            whole = client.get(f"{box}/releases/2.0.0/wheels/{FILE}")
            assert whole.status_code == 200 and whole.content == WHEEL
            part = client.get(f"{box}/releases/2.0.0/wheels/{FILE}", headers={"Range": "bytes=1000-"})
            assert part.status_code == 206 and part.content == WHEEL[1000:]
            assert part.headers["content-range"] == f"bytes 1000-{len(WHEEL) - 1}/{len(WHEEL)}"
            # only the boxes' routes: no login, no API on this port
            assert client.post(f"{box}/api/v1/session", json={"username": "root", "password": PASSWORD}
                               ).status_code == 404
            assert client.get(f"{box}/api/v1/health").status_code == 404

        dest = tmp_path / "w.whl"  # the box's own fetcher resumes a killed download over this port
        (tmp_path / "w.whl.part").write_bytes(WHEEL[:3000])
        stats = Stats()
        fetch_file(f"{box}/releases/2.0.0/wheels/{FILE}", dest, size=len(WHEEL),
                   sha256=hashlib.sha256(WHEEL).hexdigest(), ctx=tls_context(ca.pem, ident.cert, ident.key),
                   rate=RateLimit(1 << 20), stop=threading.Event(), stats=stats)
        assert dest.read_bytes() == WHEEL and stats.bytes == len(WHEEL) - 3000
        with pytest.raises(FetchError):
            fetch_file(f"{box}/releases/2.0.0/wheels/{FILE}", tmp_path / "x.whl", size=len(WHEEL),
                       sha256=hashlib.sha256(WHEEL).hexdigest(), ctx=tls_context(ca.pem, None, None),
                       rate=RateLimit(1 << 20), stop=threading.Event(), stats=Stats())

        proc.send_signal(signal.SIGTERM)  # one process: both listeners stop together
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"boxes' downloads on https://127.0.0.1:{box_port}" in err

    def closed(p: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", p)) != 0

    wait_until(lambda: closed(box_port) and closed(port), timeout=10)
