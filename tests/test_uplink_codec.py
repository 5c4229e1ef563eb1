"""The uplink batch format (agent/protocol/batch.py): round trip, refusals, and a frozen dictionary."""

from __future__ import annotations

import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.protocol import batch
from agent.protocol.batch import BatchError, expand, pack, parse_batch_topic, unpack
from agent.protocol.envelope import Envelope, MsgClass


def test_dictionary_1_is_frozen() -> None:
    """Boxes in the field compress with it; a county must decode their batches forever: never edit it."""
    assert hashlib.sha256(batch.DICTS[1]).hexdigest() == \
        "62a1ba35a90b451cb3d85c8cc1d35d367e0d8e3771ca21113bb4b0592d7c4cc3"
    # and a batch made today decodes with the dictionary named in its header byte, not the default
    body = Envelope("b", 1, 2, MsgClass.TELEMETRY, "position", {"x": 1}).encode()
    assert unpack(pack([body], dict_id=0)) == [body] == unpack(pack([body], dict_id=1))


@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40))
def test_round_trip_keeps_every_body_byte_for_byte(bodies: list[bytes]) -> None:
    assert unpack(pack(bodies)) == bodies


def test_the_dictionary_earns_its_keep() -> None:
    bodies = [Envelope("village-042", 100 + i, 1_764_547_200_000 + i * 60_000, MsgClass.TELEMETRY, "position",
                       {"wearer": f"w-{i:03d}", "device": f"band-{i:03d}",
                        "pos": {"lat": 30.27 + i / 1e5, "lon": 120.15 - i / 1e5, "fix_ts": 1_764_547_199_000 + i,
                                "acc_m": 4.5, "source": "gnss"}}).encode() for i in range(10)]
    assert len(pack(bodies, dict_id=1)) < 0.8 * len(pack(bodies, dict_id=0)) < 0.3 * sum(map(len, bodies))


@pytest.mark.parametrize(("payload", "why"), [
    (b"", "too short"),
    (b"\x02\x01" + b"x", "unsupported batch format version 2"),
    (b"\x01\x09", "unknown batch dictionary 9"),
    (b"\x01\x00garbage", "not DEFLATE"),
    (pack([b"abc"])[:-2], "truncated"),
    (pack([b"abc"]) + b"tail", "after the end"),
    (b"\x01\x00" + zlib.compress(b"", 9, wbits=-15), "empty batch"),
    (b"\x01\x00" + zlib.compress(b"\x05ab", 9, wbits=-15), "bad length"),
    (b"\x01\x00" + zlib.compress(b"\x00", 9, wbits=-15), "bad length"),
    (b"\x01\x00" + zlib.compress(b"\x80" * 6, 9, wbits=-15), "bad length"),
    (b"\x01\x00" + zlib.compress(b"\x00" * (batch.MAX_UNPACKED + 1), 9, wbits=-15), "inflates past"),
    (b"\x01\x00" + zlib.compress(b"\x01a" * (batch.MAX_ENVELOPES + 1), 9, wbits=-15), "more than"),
])
def test_anything_but_a_whole_batch_is_refused_whole(payload: bytes, why: str) -> None:
    with pytest.raises(BatchError, match=why):
        unpack(payload)


def test_topics_and_expand() -> None:
    assert parse_batch_topic("vc/v1/box/b-1/up/batch/telemetry") == ("vc/v1/box/b-1/up", "b-1", MsgClass.TELEMETRY)
    assert parse_batch_topic("x/box/b-1/up/batch/event") == ("x/box/b-1/up", "b-1", MsgClass.EVENT)
    for never in ("vc/v1/box/b/up/batch/alarm", "vc/v1/box/b/up/batch/receipt", "vc/v1/box/b/up/batch/x",
                  "vc/v1/box/b/up/telemetry/batch", "vc/v1/box/b/up/batch/telemetry/x"):
        assert parse_batch_topic(never) is None
    with pytest.raises(ValueError, match="never batched"):
        batch.batch_topic("vc/v1", "b", MsgClass.ALARM)
    one = Envelope("b", 7, 1, MsgClass.TELEMETRY, "heartbeat", {"kind": "not this", "data": 1}).encode()
    assert expand("vc/v1/box/b/up/batch/telemetry", pack([one, one])) == \
        [("vc/v1/box/b/up/telemetry/heartbeat", one)] * 2
    assert expand("vc/v1/box/b/up/telemetry/x", b"as is") == [("vc/v1/box/b/up/telemetry/x", b"as is")]
    assert expand("vc/v1/box/b/up/batch/telemetry", b"junk") == [("vc/v1/box/b/up/batch/telemetry", b"junk")]
