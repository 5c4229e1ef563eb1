"""Run the real agent as a subprocess (`village agent run -c FILE`), the way systemd does.

READY=1 is observed through a real NOTIFY_SOCKET (a Unix datagram socket this harness binds), so tests
wait on the same signal systemd waits on. The same socket carries the agent's STATUS= line
(agent.sdnotify.StatusBoard: `link=connected mqtt=5 relay=off ...`): `statuses` holds every one, in
order, and `wait_status` waits for one; that line, not the log's wording, is what tests read the box's
state from. A thread drains the socket all the time, so the agent never finds it full.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.sdnotify import StatusBoard
from tests.support import toml_dumps

FLUSH = "\0flush:"  # the harness's own marker datagram (no agent message starts with NUL)


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
        self.statuses: list[dict[str, str]] = []  # every STATUS= line, parsed, in order
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._flush_seq = self._flushed = 0
        self._mark = 0  # messages before this index were seen by wait_message/poll_messages
        self._status_mark = 0  # statuses before this index were passed by wait_status
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
        self.notify.settimeout(0.2)
        self._reader = threading.Thread(target=self._read, args=(self.notify,), daemon=True)
        self._reader.start()

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                message = sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            with self._cond:
                if message.startswith(FLUSH):
                    self._flushed = int(message[len(FLUSH):])
                else:
                    self.messages.append(message)
                    if (fields := StatusBoard.parse(message)) is not None:
                        self.statuses.append(fields)
                self._cond.notify_all()

    def poll_messages(self) -> list[str]:
        """Every message received so far, including all already sent: a marker datagram sent to the socket
        comes back through the reader after everything queued before it (datagrams keep their order)."""
        if self.notify is not None and self._reader is not None and self._reader.is_alive():
            with self._cond:
                self._flush_seq += 1
                want = self._flush_seq
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as marker:
                marker.sendto(f"{FLUSH}{want}".encode(), str(self.notify_path))
            with self._cond:
                if not self._cond.wait_for(lambda: self._flushed >= want, timeout=10):
                    raise TimeoutError("the notify reader did not catch up")
        with self._cond:
            self._mark = len(self.messages)
            return list(self.messages)

    @property
    def status(self) -> dict[str, str]:
        """The agent's latest STATUS= fields ({} before the first)."""
        with self._cond:
            return dict(self.statuses[-1]) if self.statuses else {}

    def _wait(self, pred: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"agent exited {self.proc.returncode} before {what}:\n{self.log_text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} from the agent within {timeout}s:\n{self.log_text()[-3000:]}")
                self._cond.wait(min(left, 0.2))  # also wakes to notice the process exiting

    def wait_message(self, needle: str, timeout: float = 30.0) -> None:
        """Wait for a notify datagram containing `needle` that no earlier wait_message/poll_messages saw."""
        with self._cond:
            seen = self._mark
        self._wait(lambda: any(needle in m for m in self.messages[seen:]), repr(needle), timeout)
        with self._cond:
            self._mark = len(self.messages)

    def wait_status(self, timeout: float = 30.0, **fields: str) -> dict[str, str]:
        """Wait for a STATUS= line with all of `fields`, after the one the previous wait_status returned
        (the first call looks from the start); returns it."""
        def match() -> int | None:
            return next((i for i in range(self._status_mark, len(self.statuses))
                         if all(self.statuses[i].get(k) == v for k, v in fields.items())), None)
        self._wait(lambda: match() is not None, f"STATUS with {fields}", timeout)
        with self._cond:
            i = match()
            assert i is not None
            self._status_mark = i + 1
            return dict(self.statuses[i])

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
