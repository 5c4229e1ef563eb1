"""Signed command published -> `started` receipt, over N commands, warm-up 0: p50/p99.

Everything is real: a mosquitto on a free port, the agent as a subprocess (`village agent run`, sim profile:
twins for relay and speaker), the county side here with paho. Each round publishes a signed emergency
`broadcast.play`, waits for its `started` receipt, then cancels it and waits for `cancelled`, so every
command meets an idle engine. Baseline in the same run: a plain QoS 1 publish -> delivery round trip
through the same broker, so the figure can be read as a multiple of what MQTT alone costs here.

The broker has `set_tcp_nodelay true`, as the county broker (docs/county/mosquitto.conf). `--broker-nagle
both` also runs the whole measurement against a mosquitto without it, in the same run, and prints the ratio:
what a broker left with Nagle on costs each command.

    .venv/bin/python bench/command_latency.py [--n 100] [--until started|received] [--broker-nagle off|on|both]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.keys import load_private_key, new_keypair  # noqa: E402
from agent.protocol import jws  # noqa: E402
from agent.protocol.envelope import MsgClass  # noqa: E402
from agent.protocol.topics import Topics  # noqa: E402
from county.console import set_nodelay  # noqa: E402
from tests.support import Mosquitto  # noqa: E402

BOX = "bench-box-001"
T = Topics()


def config_toml(state: Path, url: str, pub: Path) -> str:
    return f"""
[box]
id = "{BOX}"
groups = ["bench"]
profile = "sim"
state_dir = "{state}"
heartbeat_s = 3600

[mqtt]
url = "{url}"

[trust.keys]
bench = "{pub}"

[broadcast]
warmup_s = 0.0
chime = ""
tail_s = 0.0
off_delay_s = 0.0
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


class County:
    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.q: queue.Queue[tuple[float, str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.q.put((time.perf_counter(), m.topic, bytes(m.payload),
                                                             bool(m.retain)))
        self.client.on_socket_open = set_nodelay  # measure the box, not this client's Nagle delay
        self.client.connect(host, int(port))
        self.client.loop_start()
        r = self.client.subscribe([(f"vc/v1/box/{BOX}/#", 1), ("bench/echo", 1)])
        time.sleep(0.2)
        assert r[0] == 0

    def wait(self, pred: Any, timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                t, topic, payload, _r = self.q.get(timeout=left)
            except queue.Empty:
                break
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = {"raw": payload}
            if pred(topic, doc):
                return t, doc
        raise TimeoutError("no matching message")


class Refused(Exception):
    """The agent did not come online, or refused a bench command."""


def measure(n: int, until: str, broker_nodelay: bool) -> tuple[list[float], list[float], list[float]]:
    """(MQTT baseline, command -> received, command -> started) round trips, in seconds."""
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker", tcp_nodelay=broker_nodelay).start()
        key_path, pub = new_keypair("bench", tmp / "keys")
        key = load_private_key(key_path)
        cfg = tmp / "agent.toml"
        (tmp / "state").mkdir()
        cfg.write_text(config_toml(tmp / "state", broker.url, pub))
        county = County(broker.url)
        log = (tmp / "agent.log").open("wb")
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "agent", "run", "-c", str(cfg)], cwd=REPO,
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                county.wait(lambda t, d: t == T.state(BOX) and d.get("state") == "online", 60)
            except TimeoutError:
                raise Refused("the agent did not come online; its log:\n"
                              + (tmp / "agent.log").read_text()[-3000:]) from None
            # baseline: plain MQTT round trip through the same broker
            base = []
            for _ in range(n):
                t0 = time.perf_counter()
                county.client.publish("bench/echo", b"x", qos=1)
                t1, _ = county.wait(lambda t, d: t == "bench/echo")
                base.append(t1 - t0)
            lat, recv = [], []
            receipt = T.up(BOX, MsgClass.RECEIPT, "cmd")
            for _ in range(n):
                cid = str(uuid.uuid4())
                now = int(time.time())
                token = jws.sign({"v": 1, "id": cid, "kind": "broadcast.play", "iat": now, "exp": now + 600,
                                  "to": [f"box:{BOX}"], "data": {"class": "emergency", "level": 1, "title": "bench",
                                                                 "text": "测试", "audio": None, "start": None,
                                                                 "end": None, "volume": None}}, key, "bench")
                t0 = time.perf_counter()
                county.client.publish(T.box_cmd(BOX), token, qos=1)

                def is_state(state: str, c: str = cid) -> Any:
                    return lambda t, d: (t == receipt and d["data"].get("cmd") == c
                                         and d["data"].get("state") in (state, "rejected", "failed"))

                t1, doc = county.wait(is_state("received"))
                recv.append(t1 - t0)
                if doc["data"]["state"] != "received":
                    raise Refused(f"command refused: {doc['data']}")
                if until == "started":
                    t2, doc = county.wait(is_state("started"))
                    if doc["data"]["state"] != "started":
                        raise Refused(f"command not started: {doc['data']}")
                    lat.append(t2 - t0)
                cancel = jws.sign({"v": 1, "id": str(uuid.uuid4()), "kind": "broadcast.cancel", "iat": now,
                                   "exp": now + 600, "to": [f"box:{BOX}"], "data": {"broadcast": cid}}, key, "bench")
                county.client.publish(T.box_cmd(BOX), cancel, qos=1)
                county.wait(lambda t, d, c=cid: t == receipt and d["data"].get("cmd") == c
                            and d["data"].get("state") in ("cancelled", "finished", "failed"))
        finally:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
            county.client.loop_stop()
            broker.stop()
    return base, recv, lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--until", choices=["started", "received"], default="started")
    ap.add_argument("--broker-nagle", choices=["off", "on", "both"], default="off",
                    help="mosquitto with set_tcp_nodelay true (off), false (on), or one run of each (both)")
    args = ap.parse_args()
    runs = {"off": [True], "on": [False], "both": [True, False]}[args.broker_nagle]
    p99: dict[bool, float] = {}
    for nodelay in runs:
        try:
            base, recv, lat = measure(args.n, args.until, nodelay)
        except Refused as exc:
            print(exc, file=sys.stderr)
            return 1

        def line(name: str, xs: list[float], base: list[float] = base) -> str:
            b50 = statistics.median(base)
            return (f"{name:<28} p50 {1000 * pct(xs, 50):7.1f} ms  p99 {1000 * pct(xs, 99):7.1f} ms  "
                    f"max {1000 * max(xs):7.1f} ms  ({pct(xs, 50) / b50:.1f}x MQTT p50)")

        print(f"{args.n} commands, warm-up 0, sim profile, broker set_tcp_nodelay {str(nodelay).lower()}")
        print(line("MQTT publish->delivery", base))
        print(line("command -> received", recv))
        if lat:
            print(line("command -> started", lat))
        p99[nodelay] = pct(lat or recv, 99)
    if len(p99) == 2:
        print(f"command -> {args.until} p99, broker Nagle on / off: {p99[False] / p99[True]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
