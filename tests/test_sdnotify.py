"""sd_notify over real Unix datagram sockets (path and abstract), the watchdog settings, the hang hook."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import sdnotify


class Listener:
    """Plays systemd's side: a bound SOCK_DGRAM socket that collects notify messages."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(5.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def wait_for(self, pred: Callable[[str], bool], limit: int = 100) -> list[str]:
        seen = []
        for _ in range(limit):
            msg = self.recv()
            seen.append(msg)
            if pred(msg):
                return seen
        raise AssertionError(f"not seen in {seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    address = str(tmp_path / "notify") if request.param == "path" else f"@village-test-{uuid.uuid4().hex}"
    lst = Listener(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    try:
        yield lst
    finally:
        lst.close()


def test_messages_arrive_as_datagrams(listener: Listener) -> None:
    assert sdnotify.ready("opening outbox")
    assert listener.recv() == "READY=1\nSTATUS=opening outbox"
    assert sdnotify.status("line one\nline two")
    assert listener.recv() == "STATUS=line one line two"
    assert sdnotify.watchdog() and listener.recv() == "WATCHDOG=1"
    assert sdnotify.stopping() and listener.recv() == "STOPPING=1"
    assert sdnotify.notify("READY=1") and listener.recv() == "READY=1"


def test_without_systemd_it_is_a_quiet_no(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(("env", "pid", "expected"), [
    ({}, 10, None),
    ({"WATCHDOG_USEC": "30000000"}, 10, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10, None),  # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, 10, None),
    ({"WATCHDOG_USEC": "0"}, 10, None),
    ({"WATCHDOG_USEC": "soon"}, 10, None),
])
def test_watchdog_interval(env: dict[str, str], pid: int, expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env, pid=pid) == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 2.0


def test_the_hang_hook_exists_only_for_sim_profiles() -> None:
    env = {sdnotify.TEST_HANG_ENV: "1.5"}
    hang = sdnotify.hang_for_tests("sim", env)
    assert isinstance(hang, sdnotify.HangForTests) and hang.after_s == 1.5
    assert sdnotify.hang_for_tests("pi", env) is None  # a real box cannot be hung by an env var
    assert sdnotify.hang_for_tests("sim", {}) is None
    assert sdnotify.hang_for_tests("sim", {sdnotify.TEST_HANG_ENV: "soon"}) is None


def test_test_switches_are_live_only_under_the_sim_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VILLAGE_TEST_HANG_AFTER_S and VILLAGE_CLOCK_OFFSET_S on a real profile change nothing; on sim they work.
    (A profile without `kind` used to be "sim", which made both live on a real box: tests/test_profiles.py.)"""
    from agent.app import build_agent
    from agent.clock import OffsetClock, SystemClock
    from agent.config import parse_config
    from agent.context import Hardware
    from agent.hardware import CLOCK_OFFSET_ENV
    from agent.profile import load_profile
    from sim.amp import TwinAmpRelay
    from sim.audio import SilentTts, TwinPlayer
    from tests.support import agent_config_dict

    monkeypatch.setenv(sdnotify.TEST_HANG_ENV, "30")
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "-3600")
    for name, live in (("sim", True), ("pi4-relayhat", False), ("pizero2w-ble", False)):
        doc = agent_config_dict(tmp_path / name, "mqtt://127.0.0.1:1")
        doc["box"]["profile"] = name
        config = parse_config(doc)
        hw = Hardware(relay=TwinAmpRelay(17), player=TwinPlayer(), tts=SilentTts())
        agent = build_agent(config, profile=load_profile(name), hardware=hw)
        names = [s.name for s in agent.services]
        assert ("test.hang" in names) is live, (name, names)
        assert isinstance(agent.context.clock, OffsetClock if live else SystemClock), name


def test_the_status_board_sends_the_whole_line_on_every_change_and_nothing_else() -> None:
    sent: list[str] = []
    board = sdnotify.StatusBoard(lambda m: sent.append(m) or True)
    board.set(profile="sim")
    board.set(link="connecting", relay="off")
    board.set(relay="off")  # no change: nothing sent
    board.set(link="connected", mqtt="5")
    assert sent == ["STATUS=profile=sim", "STATUS=profile=sim link=connecting relay=off",
                    "STATUS=profile=sim link=connected relay=off mqtt=5"]
    assert sdnotify.StatusBoard.parse(sent[-1]) == {"profile": "sim", "link": "connected", "relay": "off", "mqtt": "5"}
    assert sdnotify.StatusBoard.parse("READY=1\nSTATUS=" + board.line()) == board.fields
    assert sdnotify.StatusBoard.parse("WATCHDOG=1") is None


def test_no_value_can_forge_a_word_in_the_status_line() -> None:
    sent: list[str] = []
    board = sdnotify.StatusBoard(lambda m: sent.append(m) or True)
    board.set(link="up relay=on\nREADY=1")
    assert sent == ["STATUS=link=up_relay_on_READY_1"]
    assert sdnotify.StatusBoard.parse(sent[0]) == {"link": "up_relay_on_READY_1"}


def test_a_listener_that_does_not_read_never_blocks_the_agent(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """sd_notify datagrams are sent without blocking: a full receive queue drops them (False), it does not
    stall the event loop (the simulator's and the tests' listeners are not systemd)."""
    lst = Listener(str(tmp_path / "slow"))
    monkeypatch.setenv("NOTIFY_SOCKET", lst.env_value)
    try:
        results = [sdnotify.notify("STATUS=" + "x" * 1000) for _ in range(5000)]  # nobody reads
        assert results[0] is True and results[-1] is False
    finally:
        lst.close()


class _Idle:
    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        await asyncio.Event().wait()


async def test_supervisor_says_ready_then_keeps_petting(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.supervisor import Supervisor  # the lead's; imported here so the rest runs without it

    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pets every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sup = Supervisor([_Idle("a"), _Idle("b")], shutdown_budget_s=30)
    task = asyncio.create_task(sup.run(), name="test.supervisor")
    try:
        seen = await asyncio.to_thread(listener.wait_for, lambda m: m.startswith("READY=1"))
        assert all(m == "WATCHDOG=1" for m in seen[:-1])  # pets may come before READY, nothing else
        more = [await asyncio.to_thread(listener.recv) for _ in range(3)]
        assert more == ["WATCHDOG=1"] * 3  # keeps petting while the loop turns
        sup.request_stop()  # not SIGTERM: its overrun timer would end this test process
        assert await task == 0
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
