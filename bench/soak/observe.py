"""What the soak watches while it runs: the county side over MQTT, the agent's outbox file, the agent's RSS.

- `County`: a paho subscriber with a persistent session (client id fixed, clean_session false), as a county
  platform runs it, so what the broker queued for it while it was away still arrives. Records every message
  with its monotonic arrival time; also publishes the signed commands.
- `OutboxWatcher`: reads the agent's outbox.db read-only every `interval_s` and keeps every row it has seen
  (id -> class, body). Together with the proxy's ledger this is "what the agent committed".
- `RssSampler`: VmRSS of the agent process from /proc, per agent run.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol.batch import expand

CLASS_NAMES = {0: "alarm", 1: "receipt", 2: "event", 3: "telemetry"}


@dataclass(frozen=True, slots=True)
class Arrival:
    t: float
    topic: str
    payload: bytes


class County:
    def __init__(self, port: int, box: str, prefix: str = "vc/v1") -> None:
        self.box, self.prefix = box, prefix
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-county", clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # annotated int; a float works
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self._subscribed.set()
        self.port = port
        self.flush_topic = f"{prefix}/soak/flush"
        self._flushes: dict[str, threading.Event] = {}

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(f"{self.prefix}/box/{self.box}/up/#", 1), (f"{self.prefix}/box/{self.box}/state", 1),
                          (self.flush_topic, 1)])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.flush_topic:
            with self._lock:
                done = self._flushes.get(bytes(msg.payload).decode(errors="replace"))
            if done is not None:
                done.set()
            return
        with self._lock:
            self.arrivals.append(Arrival(time.monotonic(), msg.topic, bytes(msg.payload)))

    def start(self) -> County:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the county collector did not subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def flush(self, timeout_s: float = 60.0) -> None:
        """Until everything the broker took in before now has reached this collector: a marker published to
        it comes back after them (mosquitto queues a subscriber's messages in the order it accepted them), so
        every envelope the broker PUBACKed to the agent has arrived once the marker has. A condition, not a
        pause: a loaded machine only takes longer."""
        token = f"flush-{time.monotonic_ns()}"
        done = threading.Event()
        with self._lock:
            self._flushes[token] = done
        self.client.publish(self.flush_topic, token, qos=1)
        if not done.wait(timeout_s):
            raise TimeoutError(f"the county collector's flush marker did not come back within {timeout_s} s")

    def publish_cmd(self, token: str) -> None:
        """QoS 1, not retained. Not waited for: while the broker is down paho keeps it and resends."""
        self.client.publish(f"{self.prefix}/box/{self.box}/cmd", token, qos=1)

    def snapshot(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def envelopes(self) -> list[tuple[float, dict[str, Any], bytes]]:
        out = []
        for a in self.snapshot():
            if "/up/" in a.topic:
                for _topic, payload in expand(a.topic, a.payload):  # an uplink batch as its envelopes (issue 14)
                    try:
                        out.append((a.t, json.loads(payload), payload))
                    except ValueError:
                        continue
        return out


@dataclass
class OutboxWatcher:
    path: Path
    interval_s: float = 0.5
    seen: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # id -> (class, body)
    errors: int = 0
    max_depth: int = 0
    _after: int = 0

    def poll(self) -> int | None:
        """Read rows committed since the last poll; returns the outbox depth now (None: unreadable)."""
        if not self.path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
            try:
                rows = db.execute("SELECT seq, cls, body FROM outbox WHERE seq > ? ORDER BY seq",
                                  (self._after,)).fetchall()
                depth = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error:
            self.errors += 1
            return None
        for seq, cls, body in rows:
            body = bytes(body) if not isinstance(body, bytes) else body
            env = json.loads(body)
            self.seen.setdefault(env["id"], (CLASS_NAMES.get(cls, str(cls)), body))
            self._after = max(self._after, seq)
        self.max_depth = max(self.max_depth, int(depth))
        return int(depth)

    def final(self) -> tuple[set[str], dict[str, int]]:
        """Ids still in the outbox, and the persisted counters (evicted.*, expired.*, refused.*)."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        try:
            left = {json.loads(b)["id"] for (b,) in db.execute("SELECT body FROM outbox")}
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        finally:
            db.close()
        return left, counters

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.poll)
            await asyncio.sleep(self.interval_s)


@dataclass
class RssSampler:
    interval_s: float = 1.0
    runs: list[list[tuple[float, int]]] = field(default_factory=list)  # per agent run: (monotonic, kB)
    pid: int | None = None

    def new_run(self, pid: int) -> None:
        self.pid = pid
        self.runs.append([])

    def sample(self) -> None:
        if self.pid is None or not self.runs:
            return
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                self.runs[-1].append((time.monotonic(), int(line.split()[1])))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)
