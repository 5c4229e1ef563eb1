"""The county broker's ACL for live audio, in a real mosquitto over mutual TLS: every box may listen on
`live/+/audio`, only a console identity may publish there (a compromised box cannot speak to the villages)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.link import LinkState
from agent.protocol.envelope import MsgClass
from tests.pki import CountyBroker, TestCA
from tests.support import Collector, wait_until
from tests.test_acl import NOT_AUTHORIZED, Box, box1, console, county, pki  # noqa: F401  (fixtures)

TOPIC = "vc/v1/live/s0123456789abcdef/audio"


def test_only_consoles_publish_live_audio_and_boxes_hear_it(box1: Box, console: Collector) -> None:  # noqa: F811
    assert box1.publish(TOPIC, b"forged by a box") == NOT_AUTHORIZED
    assert box1.subscribe(TOPIC) == [1]
    console.publish(TOPIC, b"from the console")
    wait_until(lambda: box1.messages)
    assert box1.messages == [(TOPIC, b"from the console")]


async def test_live_audio_comes_on_the_boxs_own_connection_which_stays_up(tmp_path: Path, pki: TestCA,  # noqa: F811
                                                                         county: CountyBroker,  # noqa: F811
                                                                         console: Collector) -> None:  # noqa: F811
    """The shipped broker makes a client's id its certificate CN (use_username_as_clientid): a second client of
    the box (a live player of its own) would take the box's session over. The live player listens on the box's
    link instead (ctx.listener), which stays connected, once, while the audio arrives and after."""
    from agent.broadcast.live_player import LiveLink
    from tests.test_tls import link_with_clock, tls_config, until

    config = tls_config(tmp_path, county.url, pki, pki.client("box-1"))
    heard: list[tuple[bytes, bool]] = []
    async with link_with_clock(config, None) as (outbox, link):
        await until(lambda: link.state is LinkState.CONNECTED)
        live = LiveLink(link, TOPIC, lambda raw, retained, t: heard.append((raw, retained)))
        await live.start()

        async def speak_until_heard() -> None:  # QoS 0 sent before the SUBSCRIBE took effect is gone: repeat
            n = 0
            while not heard:
                console.publish(TOPIC, b"frame %d" % n, qos=0)
                n += 1
                await asyncio.sleep(0.1)

        async with asyncio.timeout(30):
            await speak_until_heard()
        sent = await outbox.send(MsgClass.EVENT, "after_live", {})
        await until(lambda: sent.id in [e["id"] for e in console.envelopes()])
        assert link.reconnects == 1 and link.state is LinkState.CONNECTED
        assert heard[0] == (heard[0][0], False) and heard[0][0].startswith(b"frame ")
        await live.close()
