"""The county broker's ACL for live audio, in a real mosquitto over mutual TLS: every box may listen on
`live/+/audio`, only a console identity may publish there (a compromised box cannot speak to the villages)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest

from county.acl import parse_fleet, render
from tests.support import Collector, wait_until
from tests.test_acl import NOT_AUTHORIZED, Box, box1, console, county, pki  # noqa: F401  (fixtures)

TOPIC = "vc/v1/live/s0123456789abcdef/audio"


def test_only_consoles_publish_live_audio_and_boxes_hear_it(box1: Box, console: Collector) -> None:  # noqa: F811
    assert box1.publish(TOPIC, b"forged by a box") == NOT_AUTHORIZED
    assert box1.subscribe(TOPIC) == [1]
    console.publish(TOPIC, b"from the console")
    wait_until(lambda: box1.messages)
    assert box1.messages == [(TOPIC, b"from the console")]


@pytest.mark.parametrize("box_clock", ["1970", "plausible"])
async def test_the_live_connection_of_a_box_in_1970_still_connects_over_tls(tmp_path: Path, box_clock: str) -> None:
    """As the link (tests/test_tls.py): a broker certificate valid only from the day after tomorrow is what a
    box whose clock reads 1970 sees of every certificate; the live audio connection must still come up (an
    emergency live session), while a set clock keeps the date check."""
    from agent.broadcast.live_player import LiveLink
    from drivers.audio.base import PlaybackError
    from tests.pki import CountyBroker, TestCA
    from tests.test_tls import tls_config

    ca = TestCA(tmp_path / "pki")
    (tmp_path / "broker").mkdir()
    future = ca.server(not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    broker = CountyBroker(tmp_path / "broker", ca, render(parse_fleet({"boxes": {"box-1": []}})), server=future)
    broker.start()
    try:
        config = tls_config(tmp_path, broker.url, ca, ca.client("box-1"))
        link = LiveLink(config, TOPIC, lambda *_: None, wall=(lambda: 5.0) if box_clock == "1970" else time.time)
        if box_clock == "1970":
            await link.start()
            async with asyncio.timeout(10):
                await link.subscribed.wait()
            await link.close()
        else:
            with pytest.raises(PlaybackError) as refused:
                await link.start()
            assert refused.value.reason == "no_audio_link"
    finally:
        broker.stop()
