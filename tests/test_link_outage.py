"""A routine 4G outage in the agent's log: a real mosquitto behind the simulator's TCP proxy (sim/netem.py).

The proxy first blackholes the path (the open connection goes silent, new connections are never answered),
then resets it (connections accepted and closed at once), then heals. The log must show one WARNING edge per
outage and one INFO on recovery, and nothing at ERROR (asyncio's "Future exception was never retrieved"
included: the futures of abandoned connection attempts are collected before the records are read).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest

from sim.netem import NetemProxy
from tests.support import Mosquitto
from tests.test_link import agent_core, config_for, until

pytestmark = pytest.mark.timeout(120)

OUTAGES = 2


def link_lines(records: list[logging.LogRecord]) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in records if r.name == "agent.link" and r.levelno >= logging.INFO]


async def test_blackhole_then_reset_logs_one_warning_and_one_recovery_per_outage(
        tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="agent.link")
    async with NetemProxy("127.0.0.1", broker.port) as proxy:
        config = config_for(tmp_path, proxy.url, mqtt={"keepalive_s": 1, "connect_timeout_s": 0.5})
        async with agent_core(config) as (_outbox, link):
            await until(lambda: link.state.value == "connected")
            for _ in range(OUTAGES):
                sessions, held, refused = link.reconnects, proxy.stats.held, proxy.stats.refused
                await proxy.down()  # blackhole: the open connection goes silent, keepalive gives up on it
                await until(lambda: link.state.value != "connected")
                # attempts into the void: each ends at the connect timeout (MQTT 5, then 3.1.1 at once)
                await until(lambda: proxy.stats.held >= held + 3)  # noqa: B023
                await proxy.down(mode="reset")  # then the path answers with resets: closed before CONNACK
                await until(lambda: proxy.stats.refused >= refused + 2)  # noqa: B023
                proxy.up()
                await until(lambda: link.state.value == "connected" and link.reconnects > sessions)  # noqa: B023
            # the attempts held by the blackhole are released by up(); wait until each has come and gone,
            # so none of them ends (or takes over the session) after the records are read
            await until(lambda: proxy.stats.connections >= proxy.stats.held + link.reconnects
                        and proxy.open_connections == 1 and link.state.value == "connected")
        gc.collect()  # abandoned futures report "exception was never retrieved" when collected
        await asyncio.sleep(0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    lines = link_lines(caplog.records)
    levels = [lvl for lvl, _ in lines]
    connected = [(lvl, msg) for lvl, msg in lines if msg.startswith("link: connected to")]
    assert all(lvl == logging.INFO for lvl, _ in connected)
    # exactly: connected, then per outage one WARNING edge followed by one INFO recovery, nothing else
    assert levels == [logging.INFO] + [logging.WARNING, logging.INFO] * (len(connected) - 1), lines
    assert [msg for lvl, msg in lines if lvl == logging.INFO] == [msg for _, msg in connected], lines
    assert len(connected) - 1 >= OUTAGES
