"""Signed agent updates end to end: real agent processes started by the project's launcher from a release
root in a temp dir, a real mosquitto, a real HTTPS release server with client certificates (tests/update_harness.py).
"""

from __future__ import annotations

import pytest

from tests.support import Collector, Mosquitto, wait_until
from tests.update_harness import (  # noqa: F401  (the fixtures, by their pytest names)
    BROKEN,
    A,
    B,
    Bundles,
    ReleaseServer,
    fixture_bundles,
    fixture_ca,
    fixture_county,
    fixture_make_box,
    fixture_server,
    fixture_template,
    receipts,
    running_version,
    wait_receipt,
)

pytestmark = pytest.mark.timeout(240)


def test_update_a_to_b_is_healthy_on_b_and_the_outbox_queued_before_is_delivered_after(
        make_box, bundles: Bundles, server: ReleaseServer, county: Collector, broker: Mosquitto) -> None:
    box = make_box()
    assert running_version(county, box) == A
    b = bundles.bundle("b", B)
    url = server.publish(b)
    cmd = box.update(county, url, b)
    wait_receipt(county, box, cmd, state="started", step="downloaded")
    # the broker goes away while A installs B: A's next receipts wait in the outbox, across the switch
    broker.stop()
    wait_until(lambda: box.layout.current_version() == B, 60)
    broker.start()
    healthy = wait_receipt(county, box, cmd, 90, state="finished", step="healthy")
    assert healthy["version"] == B
    steps = [r.get("step") for r in receipts(county, cmd)]
    # queued by A before the update (installed, switching), delivered by B after it
    assert steps.index("installed") < steps.index("switching") < steps.index("healthy")
    assert box.layout.previous_version() == A and (box.layout.releases / A).is_dir()
    assert running_version(county, box) == B
    # only the project's wheel was fetched: the dependency wheels were already in the box's store
    fetched = [p for p, _ in server.requests if p.endswith(".whl")]
    assert fetched == [f"/releases/b/wheels/{b.manifest.project_wheel.file}"]


def test_b_that_cannot_start_is_rolled_back_by_the_launcher_and_a_keeps_working(
        make_box, bundles: Bundles, server: ReleaseServer, county: Collector) -> None:
    box = make_box(max_boots=2)
    broken = bundles.bundle("broken", BROKEN)
    cmd = box.update(county, server.publish(broken), broken)
    token = box.last_token
    r = wait_receipt(county, box, cmd, 120, state="failed", reason="rolled_back")
    assert r["version"] == A and "starts" in r["detail"]
    assert box.layout.current_version() == A and box.layout.read_trial() is None
    assert running_version(county, box) == A
    # the replay store came back with A: the same signed update is not obeyed twice
    county.publish(box.topic, token)
    assert wait_receipt(county, box, cmd, state="rejected")["reason"] == "replay"
    log = box.log_text()
    assert "village_edge_deliberately_missing_module" in log, log[-3000:]
