"""Fleet mode against a real mosquitto: a handful of boxes speak the contract and the county counts them."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from sim.fleet import FleetError, FleetOptions, run_fleet
from tests.support import Collector, Mosquitto

pytestmark = pytest.mark.timeout(90)


async def test_a_small_fleet_speaks_the_contract(broker: Mosquitto, collector: Collector) -> None:
    result = await run_fleet(FleetOptions(boxes=8, broker_url=broker.url, duration_s=4, speed=20, ramp_s=1))
    assert result.connected == 8 and result.connects == 8  # every box connected once: no reconnect storm
    assert result.sent > 0 and result.unique >= result.sent  # everything PUBACKed reached the county
    assert result.received == result.unique  # no duplicates on a healthy link
    assert result.p99_ms is not None  # figures exist; their size is the bench's business, not a test's

    envelopes = collector.envelopes()
    seqs: dict[str, list[int]] = defaultdict(list)
    for env in envelopes:
        assert set(env) == {"v", "id", "box", "seq", "ts", "class", "kind", "data"}
        assert env["id"] == f"{env['box']}:{env['seq']}" and env["class"] == "telemetry"
        seqs[env["box"]].append(env["seq"])
    assert len(seqs) == 8
    for box, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), box  # per box: 1, 2, 3... in order, none missing
    states = {m.topic: json.loads(m.payload)["state"] for m in collector.snapshot() if m.topic.endswith("/state")}
    assert len(states) == 8  # online on connect, then the clean disconnect at the end
    kinds = {env["kind"] for env in envelopes}
    assert kinds == {"position", "heartbeat"}


async def test_fleet_refuses_a_broker_url_it_cannot_use() -> None:
    with pytest.raises(FleetError, match="mqtt://host:port"):
        await run_fleet(FleetOptions(boxes=1, broker_url="http://x", duration_s=1))
