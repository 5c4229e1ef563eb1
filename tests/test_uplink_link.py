"""The link's 4G economy (issue 14): TLS session resumption, a silent link given up on when an alarm gets
no PUBACK (the 4G keepalive is long), byte accounting in the heartbeat and `village agent status`."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.config import parse_config
from agent.heartbeat import Heartbeat
from agent.protocol.envelope import MsgClass
from agent.status import collect, render
from county.acl import parse_fleet
from county.acl import render as render_acl
from sim.netem import NetemProxy
from tests.pki import CountyBroker, TestCA, tls_collector
from tests.support import Mosquitto, agent_config_dict, wait_until
from tests.test_link import agent_core, config_for


async def until(pred, timeout: float = 20.0) -> None:
    await asyncio.to_thread(wait_until, pred, timeout)


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def county(tmp_path: Path, ca: TestCA) -> Iterator[CountyBroker]:
    (tmp_path / "broker").mkdir()
    broker = CountyBroker(tmp_path / "broker", ca, render_acl(parse_fleet({"boxes": {"box-1": ["town-test"]}}))).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize("resumption", [True, False])
async def test_tls_session_is_resumed_on_reconnect(tmp_path: Path, ca: TestCA, county: CountyBroker,
                                                  resumption: bool) -> None:
    identity = ca.client("box-1")
    (tmp_path / "state").mkdir()
    config = parse_config(agent_config_dict(
        tmp_path / "state", county.url,
        mqtt={"ca": str(ca.pem), "cert": str(identity.cert), "key": str(identity.key), "backoff_min_s": 0.05},
        uplink={"tls_resumption": resumption}))
    console = tls_collector(county, ca.client("county-console"), ["vc/v1/box/+/up/#"])
    try:
        async with agent_core(config) as (outbox, link):
            handshakes = []
            for n in range(3):
                await until(lambda: link.state.value == "connected" and link.reconnects == n + 1)  # noqa: B023
                conn = link.current
                assert conn is not None
                handshakes.append(conn.client.socket().session_reused)
                await outbox.send(MsgClass.ALARM, "sos", {"n": n})
                await until(lambda: len(console.envelopes()) == n + 1)  # noqa: B023
                conn.client.socket().shutdown(socket.SHUT_RDWR)  # a 4G drop: the link reconnects
        assert handshakes == ([False, True, True] if resumption else [False, False, False])
        assert link.tls_resumed == (2 if resumption else 0)
    finally:
        console.stop()


async def test_an_alarm_without_puback_drops_a_silent_link_and_goes_again(tmp_path: Path, broker: Mosquitto) -> None:
    """The 4G keepalive (300 s) would notice a link gone silent only minutes later; an alarm does not wait."""
    async with NetemProxy("127.0.0.1", broker.port) as proxy:
        config = config_for(tmp_path, proxy.url, mqtt={"keepalive_s": 300, "connect_timeout_s": 1},
                            uplink={"urgent_ack_timeout_s": 1})
        from tests.support import Collector

        county = Collector(broker.url, ["vc/v1/box/+/up/#"]).start()
        try:
            async with agent_core(config) as (outbox, link):
                await until(lambda: link.state.value == "connected")
                await proxy.down()  # silent: no reset, bytes held
                alarm = await outbox.send(MsgClass.ALARM, "sos", {"wearer": "w-1"})
                await until(lambda: link.urgent_timeouts == 1)
                proxy.up()
                await until(lambda: alarm.id in {e["id"] for e in county.envelopes()})
        finally:
            county.stop()


async def test_bytes_per_day_and_month_in_the_heartbeat_and_agent_status(tmp_path: Path, broker: Mosquitto) -> None:
    config = config_for(tmp_path, broker.url)
    async with agent_core(config) as (outbox, link):
        await until(lambda: link.state.value == "connected")
        for i in range(50):
            await outbox.send(MsgClass.TELEMETRY, "position", {"i": i, "pad": "x" * 200})
        await until(lambda: sum(outbox.depth().values()) == 0)
        link.current.meter.sample(link.current.client.socket())
        hb = await Heartbeat(outbox, SystemClock(), interval_s=60).snapshot()
    usage = hb["usage"]
    assert usage["measured"] and usage["sent_day"] == usage["sent_month"] > 0 and usage["received_day"] > 0
    # compressed batches: far fewer bytes than the 50 envelopes of ~270 bytes each, but TCP/IP and TLS-free MQTT
    assert 500 < usage["sent_day"] < 50 * 270
    saved = json.loads((config.outbox_path.parent / "usage.json").read_text())
    assert saved["sent_month"] >= usage["sent_month"], "written when the connection ended"
    text = render(collect(config))
    assert "4G data" in text and f"day {usage['day']}" in text and "MB" in text
