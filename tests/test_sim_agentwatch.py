"""The simulator reads what the box did from the agent's STATUS= line, not from the wording of its log.

It used to match "amplifier relay (on|off)" and "link: connected to" in the agent's stderr: log wording was
an untested interface, and (issue 11 item 2) a forged log line could fake a relay click. The whole path
(a real agent child process) is covered by tests/test_sim_run.py; here the folding itself.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from sim.agentproc import AgentWatch, SimAgent


def sim_agent(tmp_path: Path, now: list[float]) -> SimAgent:
    return SimAgent(tmp_path, {"box": {"id": "b"}}, lambda: now[0])


def send(agent: SimAgent, message: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), b"\0" + agent.notify_address[1:].encode())


def test_log_lines_are_not_an_interface(tmp_path: Path) -> None:
    now = [1.0]
    agent = sim_agent(tmp_path, now)
    try:
        for line in ("2026-12-01 10:00:00,000 INFO drivers.amp: amplifier relay on",
                     "2026-12-01 10:00:00,000 INFO agent.link: link: connected to mqtt://x:1 (MQTT 5, session new)"):
            agent._seen(line)
        assert agent.watch.relay == "off" and agent.watch.relay_clicks == [] and not agent.watch.link_up
        assert agent.watch.connects == 0 and agent.watch.mqtt_version is None
    finally:
        agent.close()


def test_status_lines_over_the_notify_socket_are_folded_in_order(tmp_path: Path) -> None:
    now = [0.0]
    agent = sim_agent(tmp_path, now)
    try:
        for t, msg in [(0.0, "STATUS=profile=sim"), (0.1, "STATUS=profile=sim relay=off link=disconnected"),
                       (0.5, "READY=1\nSTATUS=profile=sim relay=off link=connecting"),
                       (1.0, "STATUS=profile=sim relay=off link=connected mqtt=3.1.1"),
                       (2.0, "STATUS=profile=sim relay=on link=connected mqtt=3.1.1"),
                       (3.0, "WATCHDOG=1"),
                       (4.0, "STATUS=profile=sim relay=off link=connected mqtt=3.1.1"),
                       (5.0, "STATUS=profile=sim relay=off link=disconnected mqtt=3.1.1")]:
            now[0] = t
            send(agent, msg)
            agent._drain_status()
        w = agent.watch
        assert w.relay_clicks == [(2.0, "on"), (4.0, "off")] and w.relay == "off"
        assert (w.connects, w.mqtt_version, w.link_up) == (1, "3.1.1", False)
    finally:
        agent.close()


def test_a_new_run_starts_with_the_relay_off_without_a_click() -> None:
    """After a power cut with the relay on, the next run reports relay=off first: that is no click."""
    w = AgentWatch(relay="on", relay_clicks=[(5.0, "on")])
    w.status({"relay": "off", "link": "disconnected"}, 9.0, first_of_run=True)
    assert w.relay == "off" and w.relay_clicks == [(5.0, "on")]
    w.status({"relay": "on", "link": "disconnected"}, 9.5, first_of_run=False)
    assert w.relay_clicks == [(5.0, "on"), (9.5, "on")]


async def test_the_reader_follows_the_socket_while_the_child_runs(tmp_path: Path) -> None:
    now = [0.0]
    agent = sim_agent(tmp_path, now)
    reader = asyncio.create_task(agent._read_status())
    try:
        send(agent, "STATUS=relay=off link=connected mqtt=5")
        await asyncio.wait_for(agent.connected(), 10)
        assert agent.watch.mqtt_version == "5"
    finally:
        reader.cancel()
        agent.close()
