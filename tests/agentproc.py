"""Run the real agent as a subprocess (`village agent run -c FILE`), the way systemd does.

READY=1 is observed through a real NOTIFY_SOCKET (a Unix datagram socket this harness binds), so tests
wait on the same signal systemd waits on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support import toml_dumps


class AgentProcess:
    def __init__(self, workdir: Path, config: dict[str, Any], *, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "agent.toml"
        self.config_path.write_text(toml_dumps(config))
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify_path = workdir / "notify.sock"
        self.notify: socket.socket | None = None
        self.messages: list[str] = []
        self.log = workdir / "agent.log"
        self.runs = 0

    def start(self, *, wait_ready: bool = True, timeout: float = 30.0) -> AgentProcess:
        self._bind_notify()
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1", **self.env}
        self.runs += 1
        with open(self.log, "ab") as log:
            log.write(f"--- run {self.runs} ---\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "agent", "run", "-c", str(self.config_path)],
                stdout=log, stderr=log, env=env, start_new_session=True,
            )
        if wait_ready:
            self.wait_message("READY=1", timeout)
        return self

    def _bind_notify(self) -> None:
        if self.notify is not None:
            return
        self.notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.1)

    def poll_messages(self) -> list[str]:
        assert self.notify is not None
        while True:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def wait_message(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while time.monotonic() < deadline:
            self.poll_messages()
            if any(needle in m for m in self.messages[seen:]):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode} before {needle!r}:\n{self.log_text()}")
        raise TimeoutError(f"no {needle!r} from the agent within {timeout}s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.notify is not None:
            self.notify.close()
            self.notify = None


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
