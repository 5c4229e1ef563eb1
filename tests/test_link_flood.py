"""A flood of junk on the box's cmd topic must not lose or delay the valid commands among it (issue 11 item 4).

The whole agent (build_agent, sim profile) against a real mosquitto; a county-side client floods the box's
cmd topic: first 5,000 junk messages at QoS 0, then 5,000 at QoS 1, with valid signed commands interleaved in
both. Every valid command must be obeyed (its `received` receipt reaches the county) on the same connection
(no reconnect), QoS 0 must be refused before it is queued (counted), and the number of commands the box holds
in memory (received, not yet acknowledged) must stay under its bound: the broker holds the rest.

The box's bound holds whatever the broker does: with MQTT 5 it asks for Receive Maximum COMMAND_WINDOW, but
mosquitto 2.0.11 sends past it once PUBACKs flow (measured: ~2,800 unacknowledged with the test broker's
`max_queued_messages 100000`), and MQTT 3.1.1 has no Receive Maximum at all; in both cases the box stops
reading once COMMAND_QUEUE commands are held, and TCP holds the rest.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent import link as link_mod
from agent.app import build_agent
from agent.config import parse_config
from agent.protocol import jws
from tests.support import Collector, Mosquitto, agent_config_dict, wait_until
from tests.test_agent_attacks import BOX, KID, pem, running

pytestmark = pytest.mark.timeout(180)
CMD = f"vc/v1/box/{BOX}/cmd"
JUNK = 5000
VALID_EACH = 10  # valid commands in each flood


def cancel_token(key: Ed25519PrivateKey) -> tuple[str, str]:
    """A valid, cheap command: cancel a broadcast that does not exist (no relay, no audio)."""
    now = int(time.time())
    cmd_id = str(uuid.uuid4())
    body = {"v": 1, "id": cmd_id, "kind": "broadcast.cancel", "iat": now, "exp": now + 600,
            "to": [f"box:{BOX}"], "data": {"broadcast": f"nothing-{cmd_id}"}}
    return cmd_id, jws.sign(body, key, KID)


def flood(port: int, messages: list[tuple[bytes, int]]) -> None:
    """Publish `messages` (payload, qos) in order as fast as paho goes; return once every QoS 1 is PUBACKed."""
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flooder-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(0)  # no limit: as fast as the broker takes them
    c.max_queued_messages_set(0)
    c.on_connect = lambda *a: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert done.wait(10), "flooder did not connect"
        infos = [c.publish(CMD, payload, qos=qos) for payload, qos in messages]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        c.loop_stop()
        c.disconnect()


def interleave(junk: list[bytes], qos: int, valid: list[str]) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = [(j, qos) for j in junk]
    step = len(out) // (len(valid) + 1)
    for i, token in enumerate(valid):  # spread through the flood, the last one near its end
        out.insert((i + 1) * step + i, (token.encode(), 1))
    return out


def received(county: Collector) -> set[str]:
    return {d["cmd"] for d in (m.json()["data"] for m in county.snapshot()) if d["state"] == "received"}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_valid_commands_are_obeyed_through_a_junk_flood_without_a_reconnect(
        tmp_path: Path, broker: Mosquitto, protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.link")
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / f"{KID}.pub"
    pub.write_bytes(pem(key))
    raw = agent_config_dict(tmp_path / "state", broker.url, trust={"keys": {KID: str(pub)}},
                            mqtt={"protocol": protocol},
                            broadcast={"warmup_s": 0.0, "off_delay_s": 0.05, "chime": ""})
    agent = build_agent(parse_config(raw))
    county = Collector(broker.url, [f"vc/v1/box/{BOX}/up/receipt/#"]).start()
    link = agent.link
    try:
        async with running(agent):
            # 1: junk at QoS 0 (commands are QoS 1 by contract) with valid QoS 1 commands among it
            ids0, tokens0 = zip(*[cancel_token(key) for _ in range(VALID_EACH)], strict=True)
            junk0 = [f"junk-qos0-{i}".encode() for i in range(JUNK)]
            await asyncio.to_thread(flood, broker.port, interleave(junk0, 0, list(tokens0)))
            await asyncio.to_thread(wait_until, lambda: set(ids0) <= received(county), 30)
            await asyncio.to_thread(wait_until, lambda: link.qos0_refused >= JUNK, 30)
            held_after_qos0 = link.commands_held_hwm  # QoS 0 never entered the queue: only the valid ones did
            # 2: junk at QoS 1 (unsigned garbage and tokens signed by an unknown key) with valid ones among it
            ids1, tokens1 = zip(*[cancel_token(key) for _ in range(VALID_EACH)], strict=True)
            stranger = Ed25519PrivateKey.generate()
            junk1 = [f"junk-qos1-{i}".encode() if i % 10 else cancel_token(stranger)[1].encode()
                     for i in range(JUNK)]
            await asyncio.to_thread(flood, broker.port, interleave(junk1, 1, list(tokens1)))
            await asyncio.to_thread(wait_until, lambda: set(ids1) <= received(county), 60)
            stats: dict[str, Any] = {"reconnects": link.reconnects, "qos0": link.qos0_refused,
                                     "hwm": link.commands_held_hwm}
    finally:
        county.stop()
    assert stats["reconnects"] == 1, "the valid commands came through on the first connection"
    assert stats["qos0"] == JUNK, "each QoS 0 message refused and counted once"
    assert 1 <= held_after_qos0 <= VALID_EACH, held_after_qos0
    qos0_lines = [r for r in caplog.records if r.name == "agent.link" and "QoS 0" in r.getMessage()]
    assert len(qos0_lines) == 1, "5,000 refusals, one log line (at most one a minute)"
    # memory bounded: the broker and TCP held the flood, not the box
    assert stats["hwm"] <= link_mod.COMMAND_QUEUE, stats
