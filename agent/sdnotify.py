"""A tiny sd_notify(3) client: READY=1, STATUS=, WATCHDOG=1, STOPPING=1 over $NOTIFY_SOCKET.

Written by hand: it is one datagram per call, and a dependency for that is not worth it.
API used by agent.supervisor (keep it): `notify(msg) -> bool`, `watchdog_interval() -> float | None`.
A datagram is sent without blocking: a listener that does not read loses messages, the agent never waits.

`StatusBoard` owns the STATUS= line: the agent's state as `key=value` words, e.g.
`STATUS=link=connected mqtt=5 relay=off`, sent whole on every change. `systemctl status` shows it to a
technician, and it is the one interface through which the simulator (sim/agentproc.py) and the tests
(tests/agentproc.py) learn what the box did; the log's wording is not an interface. Keys:
  link   disconnected | connecting | connected     (agent.link's state, on every edge)
  mqtt   5 | 3.1.1                                  (the protocol of the current or last connection)
  relay  on | off                                   (the amplifier relay, on every switch)
  profile  <kind>                                   (the hardware profile's kind: pi | sim)
Values are reduced to [A-Za-z0-9._:/-] (anything else becomes "_"), so no value can forge a word.

Also here, because it exists only to prove the watchdog works: `HangForTests`, a service that blocks
the event loop after `VILLAGE_TEST_HANG_AFTER_S` seconds. `hang_for_tests(profile_kind)` returns it only
when the hardware profile is "sim", so no environment variable can hang a real box.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("agent.sdnotify")

TEST_HANG_ENV = "VILLAGE_TEST_HANG_AFTER_S"


def _address(raw: str) -> str | bytes:
    # '@name' is an abstract socket: a leading NUL byte on the wire
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


def notify(message: str) -> bool:
    """Send `message` to systemd; False when not run by systemd (no NOTIFY_SOCKET) or on error."""
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw or not (raw.startswith("/") or raw.startswith("@")):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.connect(_address(raw))
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def ready(status: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status`; newlines would end the field, so they go."""
    return notify("STATUS=" + text.replace("\n", " "))


_UNSAFE = re.compile(r"[^A-Za-z0-9._:/-]")


def _word(value: object) -> str:
    return _UNSAFE.sub("_", str(value))[:80] or "_"


class StatusBoard:
    """The agent's state as one STATUS= line; `set()` sends the whole line when anything changed."""

    def __init__(self, send: Callable[[str], bool] = notify) -> None:
        self._send = send
        self.fields: dict[str, str] = {}

    def set(self, **fields: object) -> None:
        new = {_word(k): _word(v) for k, v in fields.items()}
        if all(self.fields.get(k) == v for k, v in new.items()):
            return
        self.fields.update(new)
        self._send("STATUS=" + self.line())

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields.items())

    @staticmethod
    def parse(message: str) -> dict[str, str] | None:
        """The fields of a notify datagram's STATUS= line, or None when it carries none (for listeners)."""
        for line in message.split("\n"):
            if line.startswith("STATUS="):
                return dict(w.split("=", 1) for w in line[7:].split() if "=" in w)
        return None


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog period systemd expects pings within (seconds), or None when it is not enabled.

    $WATCHDOG_PID, when set, names the process meant: a child that inherited the variables must not pet.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    want_pid = env.get("WATCHDOG_PID")
    if want_pid and (not want_pid.isdigit() or int(want_pid) != (os.getpid() if pid is None else pid)):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class HangForTests:
    """Test-only: after `after_s` seconds block the event loop for good, like a deadlocked driver call.

    The supervisor's watchdog pings then stop, which is what tests/test_install.py checks systemd's side of.
    """

    name = "test.hang"

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        await asyncio.sleep(self.after_s)
        log.warning("test hang: blocking the event loop now (%s is set, sim profile)", TEST_HANG_ENV)
        while True:
            time.sleep(3600)  # noqa: ASYNC251 - blocking on purpose: a loop that no longer turns


def hang_for_tests(profile_kind: str, environ: Mapping[str, str] | None = None) -> HangForTests | None:
    """The hang service when $VILLAGE_TEST_HANG_AFTER_S is set AND the profile is "sim", else None."""
    env = os.environ if environ is None else environ
    raw = env.get(TEST_HANG_ENV)
    if raw is None:
        return None
    if profile_kind != "sim":
        log.warning("%s ignored: only a sim profile may be hung on purpose", TEST_HANG_ENV)
        return None
    try:
        after_s = float(raw)
    except ValueError:
        log.warning("%s=%r ignored: not a number of seconds", TEST_HANG_ENV, raw)
        return None
    return HangForTests(max(0.0, after_s))
