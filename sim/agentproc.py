"""The real agent as a child process, the way a box runs it: `python -m agent.cli agent run -c FILE`.

Same code path as on a box (profile "sim" only swaps the relay and the speaker for the twins that
sim/hardware.py registers), so the simulator can SIGKILL it for a power cut and start it again on the
same state directory.

The simulator learns what the box *did* (as opposed to what the county saw) from the agent's STATUS=
line on a NOTIFY_SOCKET it binds, as systemd would (agent.sdnotify.StatusBoard: `link=connected mqtt=5
relay=on ...`, sent whole on every change: every relay click, every link edge). The log on stderr goes to
WORKDIR/agent.log for people to read; its wording is not an interface (only its ERROR/CRITICAL lines are
counted for the summary).

The generated config scales the agent's timers by the run's speed (docs/simulator.md, "What scales").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.hardware import CLOCK_OFFSET_ENV
from agent.sdnotify import StatusBoard
from sim.scenario import Scenario

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class AgentProcessError(Exception):
    """The agent child process did not start or did not connect."""


def toml_dumps(doc: dict[str, Any]) -> str:
    """Enough TOML for generated configs: nested tables, arrays of tables, strings, numbers, bools, lists.

    Written by hand because tomllib only reads, and these configs are a handful of plain tables.
    """
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any], header: str) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) and not _is_aot(v)}
        lines.append(header)
        lines.extend(f"{json.dumps(str(k))} = {value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v, f"[{prefix}.{json.dumps(str(k))}]")
            elif _is_aot(v):
                for item in v:
                    table(f"{prefix}.{k}", item, f"[[{prefix}.{json.dumps(str(k))}]]")

    for k, v in doc.items():
        if isinstance(v, dict):
            table(k, v, f"[{k}]")
        elif _is_aot(v):
            for item in v:
                table(k, item, f"[[{k}]]")
        else:
            lines.insert(0, f"{k} = {value(v)}")
    return "\n".join(lines) + "\n"


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def agent_config(scenario: Scenario, *, speed: float, state_dir: Path, broker_url: str, gateway_url: str,
                 fences_file: Path | None, trust: dict[str, str], cameras: list[dict[str, Any]],
                 mqtt_protocol: str = "auto") -> dict[str, Any]:
    """The agent config for this scenario at this speed. Scenario seconds / speed = the agent's seconds."""
    box, meta = scenario.box, scenario.scenario

    def s(seconds: float, floor: float = 0.05) -> float:
        return round(max(floor, seconds / speed), 3)

    interval = s(box.camera_interval_s, 0.5)
    wearables: dict[str, Any] = {
        "exit_s": s(box.exit_s, 0.0), "report_interval_s": s(meta.tick_s),
        "lost_contact_factor": max(1.0, box.lost_contact_factor), "sos_fold_s": s(120),
        "position_min_interval_s": s(30, 0.0), "position_max_interval_s": s(900),
        "tick_s": min(1.0, s(meta.tick_s) / 4),
    }
    if fences_file is not None:
        wearables["fences_file"] = str(fences_file)
    doc: dict[str, Any] = {
        "box": {"id": box.id, "groups": list(box.groups), "profile": "sim", "state_dir": str(state_dir),
                "heartbeat_s": s(box.heartbeat_s, 0.5)},
        "mqtt": {"url": broker_url, "protocol": mqtt_protocol, "backoff_min_s": 0.2, "backoff_max_s": s(60, 1.0),
                 "keepalive_s": max(2, int(30 / speed)), "connect_timeout_s": max(2.0, s(10))},
        "log": {"level": box.log_level},
        # telemetry and events go up in batches (issue 14): the field's minute, scaled like every other period,
        # and at most a quarter of the heartbeat (the field's 60 s of 240 s), so the box can be seen quiet
        # (backlog 0) between two heartbeats when the run drains
        "uplink": {"batch_window_s": round(max(0.05, min(60, box.heartbeat_s / 4) / speed), 3)},
        "broadcast": {"warmup_s": s(1.5, 0.0), "tail_s": s(0.5, 0.0), "off_delay_s": s(10, 0.0),
                      "quiet_hours": list(box.quiet_hours)},
        "wearables": wearables,
        "cameras": {"interval_s": interval, "connect_timeout_s": min(3.0, interval / 2),
                    "step_timeout_s": min(5.0, interval / 2), "telemetry_s": s(900, 1.0)},
        "gateway": [{"id": "gw1", "url": gateway_url, "codec": scenario.gateway.codec, "silent_s": s(300)}],
        "wearer": [{"id": w.id, "device": w.device, "fences": list(w.fences)} for w in scenario.wearers],
    }
    if trust:
        doc["trust"] = {"keys": trust}
    if cameras:
        doc["camera"] = cameras
    return doc


@dataclass
class AgentWatch:
    """What the box did, read from its STATUS= line."""

    relay: str = "off"
    relay_clicks: list[tuple[float, str]] = field(default_factory=list)  # (scenario t, "on"/"off")
    mqtt_version: str | None = None
    connects: int = 0
    link_up: bool = False
    errors: list[str] = field(default_factory=list)  # ERROR/CRITICAL lines, for the summary
    statuses: int = 0  # STATUS= lines received, over all runs

    def status(self, fields: dict[str, str], scenario_t: float, *, first_of_run: bool) -> bool:
        """Fold one STATUS= line in; True when the link came up with it."""
        self.statuses += 1
        relay = fields.get("relay")
        if relay in ("on", "off") and relay != self.relay:
            if not first_of_run:  # a new run starts with the relay off: not a click (the power cut was)
                self.relay_clicks.append((round(scenario_t, 2), relay))
            self.relay = relay
        link = fields.get("link")
        if link == "connected" and not self.link_up:
            self.mqtt_version = fields.get("mqtt")
            self.connects += 1
            self.link_up = True
            return True
        if link in ("connecting", "disconnected"):
            self.link_up = False
        return False


class SimAgent:
    """The agent child process: start, SIGKILL (power cut), start again, SIGTERM at the end."""

    def __init__(self, workdir: Path, config: dict[str, Any], scenario_time: Callable[[], float],
                 *, clock_offset_s: float = 0.0, on_line: Callable[[str], None] | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "agent.toml"
        self.config_path.write_text(toml_dumps(config))
        self.log_path = workdir / "agent.log"
        self.scenario_time = scenario_time
        self.clock_offset_s = clock_offset_s
        self.on_line = on_line
        self.watch = AgentWatch()
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.exit_codes: list[int] = []
        self._connected = asyncio.Event()
        self._log = open(self.log_path, "a", encoding="utf-8", buffering=1)  # closed in close()
        # systemd's side of sd_notify, abstract (no path-length limit, nothing left on disk)
        self.notify_address = f"@village-sim-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self._notify.bind(b"\0" + self.notify_address[1:].encode())
        self._first_of_run = True

    def close(self) -> None:
        self._log.close()
        self._notify.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def run(self, started: asyncio.Event) -> None:
        """Own the child for one run: start it, follow its STATUS= and log until it exits. Cancel = SIGKILL."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": self.notify_address}
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)  # not systemd's watchdog here
        if self.clock_offset_s:
            env[CLOCK_OFFSET_ENV] = str(self.clock_offset_s)
        self.runs += 1
        self._connected.clear()
        self.watch.link_up = False
        self._first_of_run = True
        self._drain_status()  # anything left from the previous run belongs to it
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "agent", "run", "-c", str(self.config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
            start_new_session=True, cwd=str(PROJECT_ROOT),
        )
        started.set()
        assert self.proc.stderr is not None
        self._log.write(f"--- run {self.runs} ---\n")
        status = asyncio.create_task(self._read_status(), name="sim.agent.status")
        try:
            while raw := await self.proc.stderr.readline():
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self._log.write(line + "\n")  # a local file, line-buffered: the agent's own pace
                self._seen(line)
            self.exit_codes.append(await self.proc.wait())
        finally:
            if self.proc.returncode is None:  # cancelled: the power goes
                self.kill()
                self.exit_codes.append(await self.proc.wait())
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
            self._drain_status()  # what the child sent before it died, in order
            self.watch.link_up = False

    async def _read_status(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._status(await loop.sock_recv(self._notify, 4096))

    def _drain_status(self) -> None:
        while True:
            try:
                data = self._notify.recv(4096)
            except (BlockingIOError, OSError):
                return
            self._status(data)

    def _status(self, data: bytes) -> None:
        fields = StatusBoard.parse(data.decode("utf-8", "replace"))
        if not fields:
            return
        if self.watch.status(fields, self.scenario_time(), first_of_run=self._first_of_run):
            self._connected.set()
        if "relay" in fields:
            self._first_of_run = False

    def _seen(self, line: str) -> None:
        if " ERROR " in line or " CRITICAL " in line:
            self.watch.errors.append(line)
        if self.on_line is not None:
            self.on_line(line)

    async def connected(self, timeout_s: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise AgentProcessError(f"the agent did not connect within {timeout_s:g} s; its log ends:\n{tail}") \
                from None

    def kill(self) -> None:
        """kill -9, as a power cut: no shutdown code runs."""
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
