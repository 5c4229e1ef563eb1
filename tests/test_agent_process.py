"""The real agent as a subprocess, the way systemd runs it: kill -9 mid-burst, clean stop, bad configs."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.wristband.events import BandAlarm
from drivers.wristband.watch import encode_alarm, encode_position, status_bits
from tests.agentproc import AgentProcess, run_cli
from tests.support import Collector, Mosquitto, agent_config_dict, free_port, toml_dumps, wait_until

LAT0, LON0 = 30.52, 114.31


class FrameServer:
    """The far end of a `socket://` gateway: accepts the agent and writes watch frames as fast as told."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        self.sent = 0
        self._stop = threading.Event()
        self.release = threading.Event()
        self._thread: threading.Thread | None = None

    def accept(self, timeout: float = 30.0) -> None:
        self.sock.settimeout(timeout)
        self.conn, _ = self.sock.accept()

    def burst(self, frames: list[bytes], pause_s: float = 0.0005, hold_after: int | None = None) -> None:
        """Write `frames`; with `hold_after`, stop after that many until `release` is set (a burst that is
        certainly still going when the test acts)."""
        def run() -> None:
            assert self.conn is not None
            for i, frame in enumerate(frames):
                if i == hold_after:
                    self.release.wait(60)
                if self._stop.is_set():
                    return
                try:
                    self.conn.sendall(frame)
                except OSError:
                    return
                self.sent += 1
                time.sleep(pause_s)
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.release.set()
        if self._thread:
            self._thread.join(5)
        for s in (self.conn, self.sock):
            if s is not None:
                s.close()


def sos_frames(n: int) -> list[bytes]:
    now = time.time()
    frames = []
    for i in range(n):
        device = f"{9000000000 + i}"
        frames.append(encode_alarm(device, ts=now, lat=LAT0 + i * 1e-4, lon=LON0, status=status_bits(BandAlarm.SOS)))
        frames.append(encode_position(device, ts=now, lat=LAT0 + i * 1e-4, lon=LON0))
    return frames


def committed_rows(db_path: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db_path) as db:
        return {f"box-1:{seq}": json.loads(body) for seq, body in db.execute("SELECT seq, body FROM outbox")}


@pytest.fixture
def frame_server() -> Iterator[FrameServer]:
    server = FrameServer()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.timeout(180)
def test_sigkill_mid_burst_loses_nothing_committed_and_seq_continues(tmp_path: Path,
                                                                    frame_server: FrameServer) -> None:
    broker = Mosquitto(tmp_path / "broker-dir", persistence=True)
    broker.workdir.mkdir()
    n = 400
    state = tmp_path / "state"
    config = agent_config_dict(
        state, broker.url,
        gateway=[{"id": "gw1", "url": f"socket://127.0.0.1:{frame_server.port}", "codec": "watch"}],
        wearer=[{"id": f"W{i}", "device": f"{9000000000 + i}"} for i in range(n)],
    )
    agent = AgentProcess(tmp_path, config)
    try:
        agent.start()  # the broker is down: everything stays in the outbox
        frame_server.accept()
        frame_server.burst(sos_frames(n), hold_after=n)  # half the burst now, the rest after the kill
        wait_until(lambda: len(committed_rows(state / "outbox.db")) >= 150, timeout=60)
        agent.kill()
        frame_server.release.set()
        before = committed_rows(state / "outbox.db")
        assert sum(1 for e in before.values() if e["kind"] == "sos") >= 50
        max_before = max(e["seq"] for e in before.values())

        broker.start()
        county = Collector(broker.url, ["vc/v1/box/+/up/#"]).start()
        try:
            agent.start()
            # everything stored before the kill, and something the new run stored (its start heartbeat):
            # stopping at the first alone raced the heartbeat and saw nothing "after"
            county.wait_for(lambda ms: {json.loads(m.payload)["id"] for m in ms} >= before.keys()
                            and any(json.loads(m.payload)["seq"] > max_before for m in ms), timeout=60)
            agent.terminate()
        finally:
            county.stop()
    finally:
        agent.close()
        broker.stop()
    got: dict[str, dict[str, Any]] = {}
    for env in county.envelopes():
        assert got.setdefault(env["id"], env) == env, "one id, one content: seq was never reused"
    for msg_id, env in before.items():
        assert got[msg_id] == env, "every message committed before the kill arrives as it was stored"
    after = [e for e in got.values() if e["id"] not in before]
    assert after and all(e["seq"] > max_before for e in after), "seq continues above the last one stored"


def test_sigterm_stops_cleanly_and_says_offline(tmp_path: Path, broker: Mosquitto) -> None:
    agent = AgentProcess(tmp_path, agent_config_dict(tmp_path / "state", broker.url))
    try:
        agent.start()
        county = Collector(broker.url, ["vc/v1/box/+/state"]).start()
        try:
            county.wait_for(lambda ms: any(json.loads(m.payload)["state"] == "online" for m in ms))
            assert agent.terminate() == 0
            county.wait_for(lambda ms: json.loads(ms[-1].payload)["state"] == "offline")
        finally:
            county.stop()
        agent.poll_messages()
        assert any("STOPPING=1" in m for m in agent.messages)
        assert "Traceback" not in agent.log_text()
    finally:
        agent.close()


def test_corrupt_database_is_moved_aside_and_the_agent_runs(tmp_path: Path, broker: Mosquitto) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 4096)
    county = Collector(broker.url, ["vc/v1/box/+/up/#"]).start()
    agent = AgentProcess(tmp_path, agent_config_dict(state, broker.url))
    try:
        agent.start()
        reset = county.wait_for(lambda ms: [m.json() for m in ms if m.topic.endswith("/event/outbox_reset")])
        assert "moved aside" in reset[0]["data"]["reason"]
        assert list(state.glob("outbox.db.corrupt-*"))
        assert agent.terminate() == 0
    finally:
        agent.close()
        county.stop()


def _write(tmp_path: Path, doc: dict[str, Any] | str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(doc if isinstance(doc, str) else toml_dumps(doc))
    return path


@pytest.mark.parametrize(("mutate", "key", "problem"), [
    (lambda d: d["box"].pop("id"), "box.id", "missing"),
    # no default profile: a box that forgot it used to run on the simulator's twins (MockFactory relay)
    (lambda d: d["box"].pop("profile"), "box.profile", "missing (required)"),
    (lambda d: d["box"].update(profile=""), "box.profile", "a hardware profile name"),
    (lambda d: d["box"].update(colour="red"), "box.colour", "unknown key"),
    (lambda d: d["box"].update(heartbeat_s="often"), "box.heartbeat_s", "expected a number"),
    (lambda d: d["mqtt"].update(url="http://county.example"), "mqtt.url", "scheme must be"),
    (lambda d: d["mqtt"].update(url="mqtt://:99999"), "mqtt.url", ""),
    (lambda d: d.update(trust={"keys": {"county-2026": "/nonexistent/county.pub"}}), "trust.keys.county-2026",
     "does not exist"),
    (lambda d: d["mqtt"].update(password_file="/nonexistent/pw"), "mqtt.password_file", "does not exist"),
])
@pytest.mark.parametrize("verb", ["check", "run"])
def test_bad_config_exits_2_with_one_line(tmp_path: Path, mutate: Any, key: str, problem: str, verb: str) -> None:
    doc = agent_config_dict(tmp_path / "state", "mqtt://127.0.0.1:1883")
    mutate(doc)
    path = _write(tmp_path, doc)
    result = run_cli("agent", verb, "-c", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and key in lines[0] and problem in lines[0]


def test_not_toml_and_missing_file_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "[box\nid = 1")
    result = run_cli("agent", "check", "-c", str(path))
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    result = run_cli("agent", "run", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_check_prints_the_resolved_config_with_secrets_masked(tmp_path: Path) -> None:
    doc = agent_config_dict(tmp_path / "state", "mqtts://box-1:s3cr3t-pw@county.example:8883")
    result = run_cli("agent", "check", "-c", str(_write(tmp_path, doc)), "--json")
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["config"]["mqtt"]["url"] == ["mqtts://box-1:***@county.example:8883"]
    assert shown["config"]["box"]["id"] == "box-1" and shown["profile"]["name"] == "sim"


def test_no_secret_in_the_agent_log(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the agent logs its connection failures
    doc = agent_config_dict(tmp_path / "state", f"mqtt://box-1:hunter2-secret@127.0.0.1:{port}")
    agent = AgentProcess(tmp_path, doc)
    try:
        agent.start()
        wait_until(lambda: "cannot connect" in agent.log_text(), timeout=20)
        assert agent.terminate() == 0
    finally:
        agent.close()
    assert "hunter2-secret" not in agent.log_text()
    assert "box-1:***@127.0.0.1" in agent.log_text()


def test_a_trust_key_that_is_not_a_key_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "county.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnot really\n-----END PUBLIC KEY-----\n")
    doc = agent_config_dict(tmp_path / "state", "mqtt://127.0.0.1:1883", trust={"keys": {"county-2026": str(bad)}})
    for verb in ("check", "run"):
        result = run_cli("agent", verb, "-c", str(_write(tmp_path, doc)))
        assert result.returncode == 2, result.stderr
        assert "trust.keys.county-2026" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_sim_profile_warns_at_every_start(tmp_path: Path) -> None:
    """A box on the simulator's twins drives no relay: that must never be quiet. One WARNING per start."""
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    broker.workdir.mkdir()
    broker.start()
    agent = AgentProcess(tmp_path, agent_config_dict(tmp_path / "state", broker.url))
    try:
        for _ in range(2):
            agent.start()
            agent.wait_status(link="connected")  # stopped while connected, not mid-connect
            assert agent.terminate() == 0
    finally:
        agent.close()
        broker.stop()
    warnings = [line for line in agent.log_text().splitlines() if " WARNING " in line and "SIMULATION" in line]
    assert len(warnings) == 2, agent.log_text()
    assert 'profile sim is a SIMULATION (kind = "sim")' in warnings[0]


def test_the_status_line_tells_what_the_box_does(tmp_path: Path) -> None:
    """What the box did reaches systemd (and the simulator, and these tests) as one STATUS= line of
    key=value words, on every change: the link's edges with its protocol, and the relay."""
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    broker.workdir.mkdir()
    broker.start()
    agent = AgentProcess(tmp_path, agent_config_dict(tmp_path / "state", broker.url))
    try:
        agent.start()
        up = agent.wait_status(link="connected")
        assert up == {"profile": "sim", "relay": "off", "link": "connected", "mqtt": "5"}
        broker.stop()
        agent.wait_status(link="disconnected")
        broker.start()
        agent.wait_status(link="connected")  # found again: a new edge, not the old line
        links = [s["link"] for s in agent.statuses if "link" in s]
        edges = [v for i, v in enumerate(links) if i == 0 or links[i - 1] != v]
        assert edges[0] == "disconnected" and edges.count("connected") == 2, edges
        assert agent.terminate() == 0
    finally:
        agent.close()
        broker.stop()
    assert {"relay": "off"}.items() <= agent.statuses[-1].items()
