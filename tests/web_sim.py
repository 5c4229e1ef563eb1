"""A village for the web console's browser tests and bench/console_web.py: beside tests/browser.py's real
`village county serve` (start_console), a real `village agent run` (profile sim) on the console's mosquitto,
trusting the console's signing key, whose wristband gateway is a `socket://` TCP link to a fake gateway in
this process: the test writes the bands' frames (positions, an SOS) on that socket as a serial-to-TCP bridge
would, so an SOS travels the whole way (codec, engine, outbox, MQTT, county ingest, event stream, page).

    console = start_console(dir, regions=REGIONS)
    village = Village(console, dir / "box").start()   # waits until the county has the box online
    village.press_sos(1)                              # wearer W1's band: an AL frame with the SOS bit

Nothing waits on time: each start waits for what it needs (READY=1, the box's retained state at the county).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from drivers.wristband.events import BandAlarm
from drivers.wristband.watch import encode_alarm, encode_position, status_bits
from tests.agentproc import AgentProcess
from tests.browser import KID, Console
from tests.support import agent_config_dict, wait_until

BOX = "a1"                       # 甲一村委会 in tests/browser.py's regions
LAT0, LON0 = 21.95, 100.45       # where the regions put it (WGS-84)


def device(i: int) -> str:
    return f"{8600000000 + i}"


class FakeGateway:
    """The far end of the box's `socket://` gateway: accepts the agent's connection, writes frames to it."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = int(self.server.getsockname()[1])
        self.conn: socket.socket | None = None
        self.lock = threading.Lock()
        self._accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="fake-gateway").start()

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a bridge writes each frame when it has it
        self.conn = conn
        threading.Thread(target=self._drain, args=(conn,), daemon=True).start()
        self._accepted.set()

    @staticmethod
    def _drain(conn: socket.socket) -> None:  # the agent's acks: read and dropped
        try:
            while conn.recv(4096):
                pass
        except OSError:
            return

    def send(self, frame: bytes) -> None:
        if not self._accepted.wait(60):
            raise TimeoutError("the agent did not connect to the fake gateway")
        assert self.conn is not None
        with self.lock:
            self.conn.sendall(frame)

    def close(self) -> None:
        for s in (self.conn, self.server):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def public_key_file(console: Console) -> Path:
    """The console's signing key's public half, written beside it (what the boxes trust)."""
    key = serialization.load_pem_private_key((console.dir / "county.key").read_bytes(), password=None)
    pub = console.dir / f"{KID}.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


class Village:
    """Box `BOX` with `wearers` bands W1..Wn on one watch-protocol gateway."""

    def __init__(self, console: Console, workdir: Path, *, wearers: int = 8, box: str = BOX) -> None:
        self.console = console
        self.workdir = workdir
        self.box = box
        self.wearers = wearers
        self.gateway: FakeGateway | None = None
        self.agent: AgentProcess | None = None

    def start(self) -> Village:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gateway = FakeGateway()
        cfg = agent_config_dict(
            self.workdir / "state", self.console.broker.url, self.box,
            trust={"keys": {KID: str(public_key_file(self.console))}},
            gateway=[{"id": "gw1", "url": f"socket://127.0.0.1:{self.gateway.port}", "codec": "watch"}],
            wearer=[{"id": f"W{i}", "device": device(i)} for i in range(1, self.wearers + 1)],
            wearables={"sos_fold_s": 1.0},
        )
        cfg["box"]["groups"] = ["town-a"]
        try:
            self.agent = AgentProcess(self.workdir, cfg).start()
            wait_until(lambda: self.box_state() == "online", timeout=60, interval=0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self.gateway is not None:
            self.gateway.close()
            self.gateway = None

    # ------------------------------------------------------------------------------------------ the bands
    def position(self, wearer: int, lat: float = LAT0, lon: float = LON0, ts: float | None = None) -> None:
        assert self.gateway is not None
        self.gateway.send(encode_position(device(wearer), ts=ts or time.time(), lat=lat, lon=lon))

    def press_sos(self, wearer: int, lat: float = LAT0, lon: float = LON0) -> None:
        assert self.gateway is not None
        self.gateway.send(encode_alarm(device(wearer), ts=time.time(), lat=lat, lon=lon,
                                       status=status_bits(BandAlarm.SOS)))

    # ------------------------------------------------------------------------------------------ the county
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        path = self.console.db_url.removeprefix("sqlite:///")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
                return list(conn.execute(sql, params))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def box_state(self) -> str | None:
        rows = self.query("SELECT state FROM boxes WHERE id = ?", (self.box,))
        return rows[0][0] if rows else None

    def audit(self, action_prefix: str = "") -> list[dict[str, Any]]:
        rows = self.query("SELECT seq, actor, action, target, detail FROM audit WHERE action LIKE ? ORDER BY seq",
                          (action_prefix + "%",))
        return [{"seq": r[0], "actor": r[1], "action": r[2], "target": r[3], "detail": json.loads(r[4])} for r in rows]

    def alarms(self, wearer: str | None = None) -> list[dict[str, Any]]:
        rows = self.query("SELECT id, kind, wearer, state, received, ts FROM alarms ORDER BY ts")
        return [{"id": r[0], "kind": r[1], "wearer": r[2], "state": r[3], "received": r[4], "ts": r[5]} for r in rows
                if wearer is None or r[2] == wearer]
