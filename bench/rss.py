"""Idle agent memory: VmRSS of the real agent, connected and idle, against a bare python + paho client.

    python -m bench.rss [--settle 5] [--profile sim|pi4-relayhat] [--gateway] [--importtime]

The agent runs as systemd runs it (`village agent run`, via tests/agentproc.py, with one pinned county
key in `[trust.keys]` as every box has) against a real local mosquitto; once its STATUS= line says
`link=connected` it idles for `--settle` seconds and its
/proc/PID/status VmRSS (and VmHWM, the peak) is read. The baseline, measured in the same run against the
same broker: a python process that imports paho, connects and loops, i.e. the floor any MQTT agent in
Python pays. `--profile pi4-relayhat` runs the real drivers on gpiozero's mock pins
(GPIOZERO_PIN_FACTORY=mock), the composition a box gets. `--gateway` adds a `socket://` wristband gateway
(so pyserial is loaded); `--importtime` prints the agent's 15 most expensive imports (`python -X
importtime`, cumulative microseconds) to see what an idle box loads.

Goal (issue 11): idle agent RSS <= 40 MB. Figures measured: docs/deployment.md ("Memory").
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.agentproc import AgentProcess
from tests.support import Mosquitto, agent_config_dict

BASELINE = """
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
up = threading.Event()
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_connect = lambda *a: up.set()
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
up.wait(30)
print("connected", flush=True)
sys.stdin.read()
"""


def vm(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m is None:
            raise RuntimeError(f"no {key} in /proc/{pid}/status")
        out[key] = int(m[1]) / 1024
    return out


def baseline(port: int, settle_s: float) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", BASELINE, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "connected":
            raise RuntimeError("the baseline client did not connect")
        time.sleep(settle_s)  # a bench: idle on purpose, like the agent
        return vm(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def agent_rss(work: Path, broker: Mosquitto, profile: str, settle_s: float, gateway: bool) -> dict[str, float]:
    extra: dict[str, Any] = {}
    listener = None
    if gateway:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        extra["gateway"] = [{"id": "gw1", "url": f"socket://127.0.0.1:{listener.getsockname()[1]}",
                             "codec": "watch"}]
    # a county signing key, as every box has: loading it is part of what the agent holds
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = work / "county.pub"
    pub.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    extra["trust"] = {"keys": {"county-2026": str(pub)}}
    doc = agent_config_dict(work / "state", broker.url, **extra)
    doc["box"]["profile"] = profile
    doc["box"]["heartbeat_s"] = 3600
    agent = AgentProcess(work, doc, env={"GPIOZERO_PIN_FACTORY": "mock"} if profile != "sim" else None)
    try:
        agent.start()
        agent.wait_status(link="connected")
        time.sleep(settle_s)  # idle: what a quiet box holds between heartbeats
        assert agent.proc is not None
        return vm(agent.proc.pid)
    finally:
        agent.terminate()
        agent.close()
        if listener is not None:
            listener.close()


def importtime(work: Path, broker: Mosquitto, profile: str) -> list[tuple[int, str]]:
    """The agent's imports by cumulative time: `-X importtime` up to READY=1."""
    doc = agent_config_dict(work / "state-it", broker.url)
    doc["box"]["profile"] = profile
    env = {"PYTHONPROFILEIMPORTTIME": "1", "GPIOZERO_PIN_FACTORY": "mock"}
    (work / "it").mkdir()
    agent = AgentProcess(work / "it", doc, env=env)
    try:
        agent.start()
        agent.wait_status(link="connected")
    finally:
        agent.terminate()
        agent.close()
    rows = []
    for line in agent.log_text().splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m[2]) <= 1:  # top-level imports only (not their children)
            rows.append((int(m[1]), m[3]))
    return sorted(rows, reverse=True)[:15]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before reading RSS")
    ap.add_argument("--profile", default="sim")
    ap.add_argument("--gateway", action="store_true", help="add a socket:// wristband gateway")
    ap.add_argument("--importtime", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker", persistence=False).start()
        try:
            base = baseline(broker.port, args.settle)
            (work / "agent").mkdir()
            agent = agent_rss(work / "agent", broker, args.profile, args.settle, args.gateway)
            top = importtime(work, broker, args.profile) if args.importtime else []
        finally:
            broker.stop()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, profile {args.profile}"
          f"{' + socket gateway' if args.gateway else ''}, idle {args.settle:g} s")
    print(f"baseline python+paho   VmRSS {base['VmRSS']:6.1f} MB  (peak {base['VmHWM']:.1f})")
    print(f"agent                  VmRSS {agent['VmRSS']:6.1f} MB  (peak {agent['VmHWM']:.1f})  "
          f"= baseline + {agent['VmRSS'] - base['VmRSS']:.1f} MB, x{agent['VmRSS'] / base['VmRSS']:.2f}")
    print(f"goal                   VmRSS <= 40 MB: {'met' if agent['VmRSS'] <= 40 else 'NOT met'}")
    for us, name in top:
        print(f"  import {name:<40} {us / 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
