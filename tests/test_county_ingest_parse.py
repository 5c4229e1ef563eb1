"""Reading a message never raises, whatever the payload (hypothesis), and what it derives fits the columns."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.protocol.topics import Topics
from county.ingest import (
    NAME_MAX,
    Bad,
    Good,
    Incoming,
    Skip,
    State,
    Store,
    clean_pos,
    parse,
    position_of,
    receipt_of,
)
from county.store import Database

T = Topics()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
KEYS = ["wearer", "device", "pos", "cmd", "state", "reason", "camera", "since", "cameras", "outbox", "version",
        "lat", "lon", "acc_m", "fix_ts", "from", "to", "seconds", "groups", "ts"]
data = st.dictionaries(st.sampled_from(KEYS), json_values | st.dictionaries(st.sampled_from(KEYS), json_values),
                       max_size=8)


def _topic(cls: str, kind: str, box: str = "b1") -> str:
    return f"{T.prefix}/box/{box}/up/{cls}/{kind}"


def _check(p: object) -> None:
    assert isinstance(p, Bad | Good | State | Skip)
    if isinstance(p, Bad):
        assert isinstance(p.reason, str)
    if isinstance(p, Good):
        d = p.env.data
        pos = clean_pos(d.get("pos"))
        assert pos is None or -90 <= pos["lat"] <= 90
        position_of("b1", "w", None, d.get("pos"), 1)
        r = receipt_of(p.env)
        if r is not None:
            assert len(r["cmd"]) <= NAME_MAX and "\x00" not in (r["reason"] or "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["alarm/sos", "receipt/cmd", "state", "event/camera", "x/y"]))
def test_any_bytes(payload: bytes, where: str) -> None:
    topic = f"{T.prefix}/box/b1/{where}" if where == "state" else f"{T.prefix}/box/b1/up/{where}"
    _check(parse(T, Incoming(topic, payload, 1, 1, False, 0, 0)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([("alarm", "sos"), ("receipt", "cmd"), ("event", "camera"), ("telemetry", "cameras"),
                        ("telemetry", "heartbeat"), ("telemetry", "position")]), data,
       st.integers(min_value=-(2**70), max_value=2**70))
def test_any_envelope_data(where: tuple[str, str], d: dict[str, Any], seq: int) -> None:
    cls, kind = where
    body = {"v": 1, "id": f"b1:{seq}", "box": "b1", "seq": seq, "ts": 5, "class": cls, "kind": kind, "data": d}
    _check(parse(T, Incoming(_topic(cls, kind), json.dumps(body).encode(), 1, 1, False, 0, 0)))


@settings(max_examples=200, deadline=None)
@given(data)
def test_any_state(d: dict[str, Any]) -> None:
    p = parse(T, Incoming(f"{T.prefix}/box/b1/state", json.dumps(d).encode(), 1, 1, True, 0, 0))
    _check(p)
    if isinstance(p, State):
        assert p.state in ("online", "offline") and (p.version is None or len(p.version) <= NAME_MAX)


def test_any_envelope_data_is_stored_without_error(db_url: str) -> None:
    """The derived rows of any data (hypothesis) go into a real database without an exception."""
    loop = asyncio.new_event_loop()
    db = loop.run_until_complete(Database.open(db_url))
    store = Store(db)
    seqs = iter(range(1, 1 << 30))

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from([("alarm", "sos"), ("alarm", "geofence_exit"), ("receipt", "cmd"), ("event", "camera"),
                            ("telemetry", "cameras"), ("telemetry", "heartbeat"), ("telemetry", "position")]),
           data)
    def one(where: tuple[str, str], d: dict[str, Any]) -> None:
        cls, kind = where
        seq = next(seqs)
        body = {"v": 1, "id": f"b1:{seq}", "box": "b1", "seq": seq, "ts": seq, "class": cls, "kind": kind, "data": d}
        item = Incoming(_topic(cls, kind), json.dumps(body).encode(), 1, 1, False, 0, 0)
        p = parse(T, item)
        assert isinstance(p, Good)
        out = loop.run_until_complete(store.write([(item, p)]))
        assert out.stored == 1

    try:
        one()
    finally:
        loop.run_until_complete(db.close())
        loop.close()
