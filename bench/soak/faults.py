"""The fault driver: one seeded random sequence of faults against the real parts, one fault at a time.

Kinds (`KINDS`):
- broker_kill: SIGKILL mosquitto, keep it down a moment, start it again on the same port and persistence.
- agent_kill: SIGKILL the agent (`village agent run` under systemd-style NOTIFY_SOCKET), start it again.
- link_drop: the proxy between agent and broker aborts every connection and refuses new ones for a while.
- link_delay: the proxy holds every chunk, both ways, for 50-400 ms, for a while.
- disk_full: the state directory is a small tmpfs; a filler file takes every free byte, then goes away.
- clock_step: the agent's wall clock steps forward or back (1 min .. 2 days), then back to true time
  (bench/soak/agentclock.py).

Faults run one after another with random gaps, so each one's effect can be read on its own; in `--short`
mode every kind comes once first (in random order), then random ones. Everything random is drawn from one
`random.Random(seed)`; timings of the real processes still vary, so a seed replays the same plan, not the
same interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.sdnotify import StatusBoard
from bench.soak.observe import RssSampler
from bench.soak.proxy import LinkProxy
from tests.agentproc import AgentProcess
from tests.support import Mosquitto

KINDS = ("broker_kill", "agent_kill", "link_drop", "link_delay", "disk_full", "clock_step")


class SoakError(Exception):
    """The soak itself cannot go on (a part would not start)."""


@dataclass
class Fault:
    kind: str
    t0: float  # monotonic, when injected
    t1: float = 0.0  # when undone (broker_kill: when the broker listened again)
    detail: dict[str, Any] = field(default_factory=dict)


class SoakAgent(AgentProcess):
    """The real agent as a subprocess, through bench.soak.agentclock so its wall clock can be stepped.

    What the box did comes from its STATUS= line (tests/agentproc.py reads the NOTIFY_SOCKET), not from the
    log's wording. The checker still reads which commands the router accepted from the log, and needs to
    know what came first, so every STATUS= line is kept with where it arrived in the log (`stamped`: the log's
    size in bytes when the datagram was read, and its fields). The agent writes a log line before it sends
    the STATUS= that follows it, so a line that ends within that size came before the status.
    """

    def __init__(self, workdir: Path, config: dict[str, Any], clock_file: Path) -> None:
        super().__init__(workdir, config)
        self.clock_file = clock_file
        clock_file.write_text("0\n")
        self.stamped: list[tuple[int, dict[str, str]]] = []  # (log size at arrival, STATUS= fields), in order

    def _read(self, sock: socket.socket) -> None:
        super()._read(_StampedSocket(sock, self))  # type: ignore[arg-type]

    def relay_statuses(self) -> list[tuple[int, str]]:
        """(log offset, "on"/"off") of every STATUS= line that names the relay, in arrival order."""
        self.poll_messages()  # everything sent so far has been read
        with self._cond:
            return [(at, fields["relay"]) for at, fields in self.stamped if "relay" in fields]

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> SoakAgent:
        self._bind_notify()
        self.poll_messages()  # the previous run's last datagrams are read before the new run's marker
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1"}
        self.runs += 1
        with open(self.log, "ab") as log:
            log.write(f"--- run {self.runs} ---\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.soak.agentclock", str(self.clock_file),
                 "agent", "run", "-c", str(self.config_path)],
                stdout=log, stderr=log, env=env, start_new_session=True)
        if wait_ready:
            self.wait_message("READY=1", timeout)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _StampedSocket:
    """The notify socket as AgentProcess's reader thread sees it: each STATUS= datagram is noted with the size
    the agent's log had when it was read (SoakAgent.stamped)."""

    def __init__(self, sock: socket.socket, agent: SoakAgent) -> None:
        self.sock, self.agent = sock, agent

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        fields = StatusBoard.parse(data.decode("utf-8", "replace"))
        if fields is not None:
            at = self.agent.log.stat().st_size
            with self.agent._cond:
                self.agent.stamped.append((at, fields))
        return data


class Disk:
    """The state directory on a tmpfs of `size_mb` when mounting works here (root), else a plain directory."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.mounted = False
        self.filler = path / "soak-filler"
        self.why_not = ""

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700", "tmpfs",
                              str(self.path)], capture_output=True, text=True)
        self.mounted = res.returncode == 0
        self.why_not = "" if self.mounted else (res.stderr.strip() or f"mount exited {res.returncode}")

    def fill(self) -> int:
        """Take every free byte; returns how many were written."""
        written = 0
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 20, 1 << 12, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        written += f.write(block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


@dataclass
class FaultDriver:
    rng: random.Random
    broker: Mosquitto
    agent: SoakAgent
    proxy: LinkProxy
    disk: Disk
    rss: RssSampler
    short: bool
    faults: list[Fault] = field(default_factory=list)
    agent_crashes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # kind -> why it could not be injected

    def plan(self) -> list[str]:
        kinds = [k for k in KINDS if k != "disk_full" or self.disk.mounted]
        if not self.disk.mounted:
            self.skipped["disk_full"] = f"no tmpfs ({self.disk.why_not})"
        first = list(kinds) if self.short else []
        self.rng.shuffle(first)
        return first + [self.rng.choice(kinds) for _ in range(10_000)]

    async def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        gap = (1.5, 4.0) if self.short else (4.0, 15.0)
        for kind in self.plan():
            await asyncio.sleep(self.rng.uniform(*gap))
            await self.ensure_agent()
            if time.monotonic() >= end:
                return
            await getattr(self, kind)()

    async def ensure_agent(self) -> None:
        """An agent that died by itself is a finding: count it and start it again."""
        if not self.agent.alive():
            self.agent_crashes += 1
            await self._start_agent()

    async def _start_agent(self) -> None:
        try:
            await asyncio.to_thread(self.agent.start, timeout=90.0)
        except (RuntimeError, TimeoutError) as exc:
            raise SoakError(f"the agent did not come back: {str(exc)[:2000]}") from None
        assert self.agent.proc is not None
        self.rss.new_run(self.agent.proc.pid)

    async def broker_kill(self) -> None:
        f = Fault("broker_kill", time.monotonic(), detail={"down_s": round(self.rng.uniform(0.3, 3.0), 2)})
        self.faults.append(f)
        await asyncio.to_thread(self.broker.kill)
        await asyncio.sleep(f.detail["down_s"])
        await asyncio.to_thread(self.broker.start)
        f.t1 = time.monotonic()

    async def agent_kill(self) -> None:
        f = Fault("agent_kill", time.monotonic(), detail={"down_s": round(self.rng.uniform(0.2, 2.0), 2)})
        self.faults.append(f)
        if self.agent.alive():
            await asyncio.to_thread(self.agent.kill)
        await asyncio.sleep(f.detail["down_s"])
        await self._start_agent()
        f.t1 = time.monotonic()

    async def link_drop(self) -> None:
        f = Fault("link_drop", time.monotonic(), detail={"down_s": round(self.rng.uniform(1.0, 8.0), 2)})
        self.faults.append(f)
        self.proxy.drop(f.detail["down_s"])
        await asyncio.sleep(f.detail["down_s"])
        f.t1 = time.monotonic()

    async def link_delay(self) -> None:
        f = Fault("link_delay", time.monotonic(), detail={"delay_s": round(self.rng.uniform(0.05, 0.4), 3),
                                                          "for_s": round(self.rng.uniform(3.0, 10.0), 2)})
        self.faults.append(f)
        self.proxy.delay(f.detail["delay_s"])
        try:
            await asyncio.sleep(f.detail["for_s"])
        finally:
            self.proxy.delay(0.0)
        f.t1 = time.monotonic()

    async def disk_full(self) -> None:
        f = Fault("disk_full", time.monotonic(), detail={"for_s": round(self.rng.uniform(2.0, 6.0), 2)})
        self.faults.append(f)
        try:
            f.detail["filled_bytes"] = await asyncio.to_thread(self.disk.fill)
            await asyncio.sleep(f.detail["for_s"])
        finally:
            await asyncio.to_thread(self.disk.release)
        f.t1 = time.monotonic()

    async def clock_step(self) -> None:
        step = self.rng.choice((-1, 1)) * round(self.rng.uniform(60.0, 2 * 86400.0))
        f = Fault("clock_step", time.monotonic(), detail={"step_s": step, "for_s": round(self.rng.uniform(3, 10), 2)})
        self.faults.append(f)
        try:
            self.agent.clock_file.write_text(f"{step}\n")
            await asyncio.sleep(f.detail["for_s"])
        finally:
            self.agent.clock_file.write_text("0\n")
        f.t1 = time.monotonic()

    async def heal(self) -> None:
        """Undo everything, for the drain at the end."""
        self.proxy.heal()
        self.agent.clock_file.write_text("0\n")
        await asyncio.to_thread(self.disk.release)
        if self.broker.proc is None or self.broker.proc.poll() is not None:
            await asyncio.to_thread(self.broker.start)
        await self.ensure_agent()


def stop_agent(agent: SoakAgent) -> int | None:
    """SIGTERM and wait; None when it had to be killed."""
    if not agent.alive():
        return agent.proc.returncode if agent.proc is not None else None
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    try:
        return agent.proc.wait(30)
    except subprocess.TimeoutExpired:
        agent.proc.kill()
        agent.proc.wait(10)
        return None
    finally:
        with contextlib.suppress(Exception):
            agent.poll_messages()  # read what it sent up to its exit (the relay off) before the socket closes
        with contextlib.suppress(Exception):
            agent.close()
