"""`village county serve -c FILE` as a process: a real mosquitto, a SQLite database, a free port.
Login over real HTTP works, ingest runs in the same process (a retained state reaches the database),
SIGTERM and SIGINT end it with exit 0; a port already taken is one line and exit 1."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import ssl
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.pki import TestCA
from tests.support import Mosquitto, county_serve, county_user_add, free_port, wait_port, wait_until

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


def setup(tmp_path: Path, broker: Mosquitto, port: int, server: str = "") -> Path:
    cfg = tmp_path / "county.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
{server}
[database]
url = "sqlite:///{tmp_path}/county.db"
[mqtt]
url = "{broker.url}"
client_id = "serve-test"
[county]
regions = "{REPO / 'county/regions.example.toml'}"
""", encoding="utf-8")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    county_user_add(cfg, "li", "operator", pw)
    return cfg



def publish_state(broker: Mosquitto, box: str) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="state-test")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        info = c.publish(f"vc/v1/box/{box}/state", json.dumps({"state": "online", "ts": 1_800_000_000_000,
                                                              "version": "0.1.0", "groups": ["town-menglou"]}),
                         qos=1, retain=True)
        info.wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


def box_state(db: Path, box: str) -> str | None:
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT state FROM boxes WHERE id = ?", (box,)).fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_logs_in_ingests_and_stops_cleanly(tmp_path: Path, broker: Mosquitto, sig: signal.Signals) -> None:
    port = free_port()
    cfg = setup(tmp_path, broker, port)
    proc = county_serve(cfg)
    try:
        wait_port(port, timeout=30)
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/api/v1/session", json={"username": "li", "password": PASSWORD}, timeout=10)
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        me = httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert me.status_code == 200 and me.json()["user"]["role"] == "operator"
        assert httpx.get(f"{base}/api/v1/me", timeout=10).status_code == 401
        publish_state(broker, "lhk-menglou-001")
        assert wait_until(lambda: box_state(tmp_path / "county.db", "lhk-menglou-001") == "online", timeout=30)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "county server on http://127.0.0.1:" in err and "stopping: signal received" in err
    assert "Traceback" not in err and PASSWORD not in err


def test_serve_on_a_taken_port_is_one_line_and_exit_1(tmp_path: Path, broker: Mosquitto) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = setup(tmp_path, broker, taken.getsockname()[1])
        proc = county_serve(cfg)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("village county serve: cannot listen on 127.0.0.1:")
    assert "Traceback" not in err


def test_serve_speaks_https_with_tls_cert_and_key(tmp_path: Path, broker: Mosquitto) -> None:
    ca = TestCA(tmp_path / "ca")
    issued = ca.server("localhost")
    port = free_port()
    cfg = setup(tmp_path, broker, port, f'tls_cert = "{issued.cert}"\ntls_key = "{issued.key}"')
    proc = county_serve(cfg)
    try:
        wait_port(port, timeout=30)
        trust = ssl.create_default_context(cafile=str(ca.pem))
        r = httpx.post(f"https://127.0.0.1:{port}/api/v1/session", json={"username": "li", "password": PASSWORD},
                       verify=trust, timeout=10)
        assert r.status_code == 200, r.text
        assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not answered on a TLS port
            httpx.post(f"http://127.0.0.1:{port}/api/v1/session", json={}, timeout=5).raise_for_status()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "county server on https://127.0.0.1:" in err


def test_serve_with_an_unusable_tls_cert_exits_2(tmp_path: Path, broker: Mosquitto) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    cfg = setup(tmp_path, broker, free_port(), 'tls_cert = "cert.pem"\ntls_key = "key.pem"')
    proc = county_serve(cfg)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{cfg}: server.tls_cert: cannot load the certificate" in lines[0], err


def test_serve_runs_retention_old_telemetry_goes_alarms_stay(tmp_path: Path, broker: Mosquitto) -> None:
    """The server purges at start (then hourly): telemetry older than [retention] telemetry_days goes,
    an alarm message of the same age stays."""
    port = free_port()
    cfg = setup(tmp_path, broker, port)  # `user add` has created and migrated the database
    db = tmp_path / "county.db"
    old = 1_000_000_000_000  # 2001: far past any retention
    with sqlite3.connect(db) as conn:
        for seq, cls in ((1, "telemetry"), (2, "alarm")):
            conn.execute("INSERT INTO messages (id, box, seq, ts, class, kind, received, raw) "
                         "VALUES (?, 'b1', ?, ?, ?, 'x', ?, '{}')", (f"b1:{seq}", seq, old, cls, old))
        conn.execute("INSERT INTO boxes (id, first_seen) VALUES ('b1', ?)", (old,))

    def classes() -> list[str]:
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute("SELECT class FROM messages ORDER BY seq")]

    proc = county_serve(cfg)
    try:
        assert wait_until(lambda: classes() == ["alarm"], timeout=30), classes()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
