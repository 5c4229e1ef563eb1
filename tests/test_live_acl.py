"""The county broker's ACL for live audio, in a real mosquitto over mutual TLS: every box may listen on
`live/+/audio`, only a console identity may publish there (a compromised box cannot speak to the villages)."""

from __future__ import annotations

from tests.support import Collector, wait_until
from tests.test_acl import NOT_AUTHORIZED, Box, box1, console, county, pki  # noqa: F401  (fixtures)

TOPIC = "vc/v1/live/s0123456789abcdef/audio"


def test_only_consoles_publish_live_audio_and_boxes_hear_it(box1: Box, console: Collector) -> None:  # noqa: F811
    assert box1.publish(TOPIC, b"forged by a box") == NOT_AUTHORIZED
    assert box1.subscribe(TOPIC) == [1]
    console.publish(TOPIC, b"from the console")
    wait_until(lambda: box1.messages)
    assert box1.messages == [(TOPIC, b"from the console")]
