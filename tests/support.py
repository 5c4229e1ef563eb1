"""Real parts for tests: a mosquitto broker on a free port and a county-side MQTT collector."""

from __future__ import annotations

import abc
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol.batch import expand
from sim.agentproc import toml_dumps  # noqa: F401 - one TOML writer for tests and the simulator

REPO = Path(__file__).resolve().parent.parent

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_ports() -> range | None:
    """This pytest-xdist worker's own slice of the ports below the kernel's ephemeral range, or None when the
    tests run in one process. Port 0 hands every worker a number from the same ephemeral pool, and between
    closing that probe socket and the server's bind another worker can be handed the same number: its
    `wait_port` then succeeds against the other worker's server. Disjoint slices make that impossible; the
    kernel never hands out ports below its ephemeral range for port 0 or outgoing connections either."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0):
        return None
    low, high = 10000, _ephemeral_low()
    span = (high - low) // int(count)
    index = int(worker[2:])
    if span < 200 or index >= int(count):
        return None
    return range(low + index * span, low + (index + 1) * span)


_port_lock = threading.Lock()
_port_next: list[int] = []  # the next candidate in this worker's slice (random start: two runs at once differ)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now (under pytest-xdist: from this worker's own slice)."""
    ports = _worker_ports()
    if ports is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    import random

    with _port_lock:
        if not _port_next:
            _port_next.append(random.randrange(len(ports)))
        for _ in range(len(ports)):
            port = ports[_port_next[0] % len(ports)]
            _port_next[0] += 1
            with socket.socket() as s:  # no SO_REUSEADDR: a port still in TIME_WAIT is passed over too
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port in {ports}")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


def listening(proc: subprocess.Popen[Any], port: int, timeout: float = 10.0) -> bool:
    """Wait until `proc` itself listens on TCP `port` (True) or exits (False). Unlike `wait_port`, a
    different process that happens to listen on that port does not count."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            conns = psutil.Process(proc.pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return False
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
        time.sleep(0.02)
    raise TimeoutError(f"process {proc.pid} does not listen on port {port}")


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `pred` until truthy; returns its value. For observing other processes, not for timing."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Mosquitto:
    """A real mosquitto on 127.0.0.1:port. Same port across restarts; optional persistence."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistence: bool = True,
                 extra_conf: str = "", tcp_nodelay: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self._port_chosen = port is not None  # by the caller: never swapped for another
        self.persistence = persistence
        self.tcp_nodelay = tcp_nodelay  # as the county broker (docs/county/mosquitto.conf); False only for benches
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # else each small write waits behind the peer's delayed ACK (~40 ms): PUBACKs, receipts
            f"set_tcp_nodelay {'true' if self.tcp_nodelay else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"log_dest file {self.log}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user and cannot write here
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self) -> Mosquitto:
        if not Path(MOSQUITTO).exists():
            raise RuntimeError("mosquitto is not installed (./scripts/test installs it)")
        for _ in range(5):
            conf = self._write_conf()
            proc = self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
            if listening(proc, self.port):
                self._port_chosen = True  # a restart comes back on the same port: its clients know this one
                return self
            proc.wait()
            if self._port_chosen:
                break
            self.port = free_port()  # another process took it between free_port() and mosquitto's bind
        raise RuntimeError(f"mosquitto could not listen on 127.0.0.1:{self.port} (exit {proc.returncode}): "
                           + (self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "no log"))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """A county-side subscriber that records everything (thread-safe), for assertions."""

    def __init__(self, url: str, topics: list[str] | tuple[str, ...] = ("vc/v1/#",),
                 client_id: str | None = None) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.topics = list(topics)
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  clean_session=True if client_id is None else False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self._subscribed.set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if self.topics:
            client.subscribe([(t, 1) for t in self.topics])
        else:  # a publish-only county console
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:  # an uplink batch (issue 14) as the envelopes it carries, byte for byte
            for topic, payload in expand(msg.topic, bytes(msg.payload)):
                self.messages.append(Received(topic, payload, bool(msg.retain)))

    def start(self) -> Collector:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("collector did not subscribe")
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def envelopes(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.snapshot() if "/up/" in m.topic]

    def wait_for(self, pred: Callable[[list[Received]], Any], timeout: float = 20.0) -> Any:
        return wait_until(lambda: pred(self.snapshot()), timeout)

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)


def agent_config_dict(state_dir: Path, broker_url: str, box: str = "box-1", **sections: Any) -> dict[str, Any]:
    """A minimal valid agent config (as parsed TOML) for tests; `sections` override/extend tables."""
    raw: dict[str, Any] = {
        "box": {"id": box, "groups": ["town-test"], "profile": "sim", "state_dir": str(state_dir),
                "heartbeat_s": 3600},
        "mqtt": {"url": broker_url, "backoff_min_s": 0.05, "backoff_max_s": 0.5, "connect_timeout_s": 3},
        "uplink": {"batch_window_s": 0.05},  # batched as in the field, without the field's minute of waiting
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **value}
        else:
            raw[name] = value
    return raw



# Where a stop lands relative to the thing it races (the cancel-safety tests): in the same loop step as
# the completion, or as the very next callback. Both orderings are what lost stops under asyncio.wait_for.
CANCEL_ORDERINGS = ["same step", "call_soon"]


def deliver_cancel(ordering: str, task: asyncio.Task[Any]) -> None:
    if ordering == "same step":
        task.cancel()
    else:
        asyncio.get_running_loop().call_soon(task.cancel)


# ---- `village county` as a process: what the county server tests start the way an operator does
def county_user_add(cfg: Path, name: str, role: str, password_file: Path) -> None:
    """`village county user add NAME --role ROLE --password-file F -c CFG`, which must succeed."""
    r = subprocess.run([sys.executable, "-m", "agent.cli", "county", "user", "add", name, "--role", role,
                        "--password-file", str(password_file), "-c", str(cfg)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def county_serve(cfg: Path) -> subprocess.Popen[str]:
    """`village county serve -c CFG` in the background, its stdout and stderr piped (text)."""
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "county", "serve", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class TwinBox(abc.ABC):
    """A box twin on a plain broker: retained `online` state with its groups, its cmd topics subscribed, every
    command verified with the county keys and handed to `on_command(topic, command, retained)` in paho's
    thread; `receipt()` answers. The county tests' stand-in for a box where the real agent is not the point:
    each test module says what its twin does with a command (FakeBox in test_county_cli, SimBox in
    test_web_broadcasts)."""

    def __init__(self, url: str, box: str, groups: list[str], keys: dict[str, Any], *, client_id: str) -> None:
        from agent.protocol.topics import Topics

        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.box, self.groups, self.keys = box, groups, keys
        self.topics = Topics()
        self.seq = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self._subscribed.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def addressed(self, command: dict[str, Any]) -> bool:
        return bool({f"box:{self.box}", *(f"group:{g}" for g in self.groups)}.intersection(command["to"]))

    @abc.abstractmethod
    def on_command(self, topic: str, command: dict[str, Any], retained: bool) -> None:
        """One verified command, in paho's thread."""

    def receipt(self, cmd: str, state: str, ts: int | None = None, **extra: Any) -> None:
        from agent.protocol.envelope import Envelope, MsgClass

        with self._lock:
            self.seq += 1
            seq = self.seq
        env = Envelope(self.box, seq, (ts if ts is not None else 1_763_900_000_000) + seq, MsgClass.RECEIPT, "cmd",
                       {"cmd": cmd, "state": state, **extra})
        self.client.publish(self.topics.up(self.box, MsgClass.RECEIPT, "cmd"), env.encode(), qos=1)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_connect(self, client: mqtt.Client, *a: Any) -> None:
        t = self.topics
        client.publish(t.state(self.box), json.dumps({"state": "online", "ts": 0, "groups": self.groups}),
                       qos=1, retain=True)
        client.subscribe([(t.box_cmd(self.box), 1)] + [(t.group_cmd(g), 1) for g in self.groups])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        from agent.protocol import jws

        _header, command = jws.verify(bytes(msg.payload), self.keys)
        self.on_command(msg.topic, command, bool(msg.retain))
