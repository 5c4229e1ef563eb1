"""The simulator's broker: a real mosquitto on a free loopback port when installed, else embedded amqtt.

Both run as child processes (amqtt through `python -m sim.broker amqtt PORT`), so the broker never shares
an event loop with the simulator's dashboard and can be stopped the same way. amqtt speaks MQTT 3.1.1 only:
the agent's link notices and falls back (agent/link.py); the guarantees are tested against mosquitto
(docs/simulator.md, and ../design/mqtt-notes.md item 6 on amqtt's QoS 1 resend gap).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

BrokerKind = Literal["auto", "mosquitto", "amqtt"]


class BrokerError(Exception):
    """The simulator could not start a broker."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listens(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds the socket listening on TCP `port`, from Linux's /proc (None where /proc
    cannot tell: the caller then trusts its connect). A free port is only free until somebody binds it: a
    second simulator can be handed the same number, and a connect alone would reach the other's server."""
    inodes: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table, encoding="ascii") as f:
                next(f)  # the header
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        inodes.add(fields[9])
        fds = os.listdir(f"/proc/{pid}/fd")
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def wait_port(port: int, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"the broker exited ({proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


class LocalBroker:
    """A broker child process on 127.0.0.1:port. `kind` "auto" prefers mosquitto."""

    def __init__(self, workdir: Path, kind: BrokerKind = "auto") -> None:
        self.workdir = workdir
        exe = mosquitto_path()
        if kind == "auto":
            kind = "mosquitto" if exe else "amqtt"
        if kind == "mosquitto" and exe is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto), use --broker-kind amqtt")
        self.kind: Literal["mosquitto", "amqtt"] = kind
        self.exe = exe
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.kind}.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "amqtt":
            return [sys.executable, "-m", "sim.broker", "amqtt", str(self.port)]
        conf = self.workdir / "mosquitto.conf"
        lines = [
            # set_tcp_nodelay: as the county broker (docs/county/mosquitto.conf); else small writes wait ~40 ms
            f"listener {self.port} 127.0.0.1", "allow_anonymous true", "set_tcp_nodelay true", "persistence false",
            "max_queued_messages 100000", "max_inflight_messages 0", "log_type error", "log_type warning",
            f"log_dest file {self.log}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user and cannot write the log here
        conf.write_text("\n".join(lines) + "\n")
        assert self.exe is not None
        return [self.exe, "-c", str(conf)]

    def start(self, attempts: int = 5) -> LocalBroker:
        """Start it and wait until it listens; a port somebody else took meanwhile (the broker exits, or the
        listener is another process) is given up for a new one, up to `attempts` times."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self._command(), stdout=log, stderr=log, start_new_session=True)
            try:
                wait_port(self.port, proc=self.proc)
            except BrokerError:
                if self.proc.poll() is None or attempt == attempts - 1:
                    raise
            else:
                if listens(self.proc.pid, self.port) is not False:
                    return self
            self.stop()
            self.port = free_port()
        raise BrokerError(f"no port of its own for the broker after {attempts} tries")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


async def _serve_amqtt(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "amqtt" or not argv[1].isdigit():
        print("usage: python -m sim.broker amqtt PORT", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve_amqtt(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
