"""Untrusted text (issue 11 items 1 and 2): what comes off the wire never crashes an envelope, a store or a
log line, and never forges a line in the log.

Real parts: the real outbox (SQLite) for envelopes, the agent's own log formatter, the real router and its
replay store. Hypothesis draws text with lone surrogates, control characters, bidi overrides and 100k runs.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import json
import logging
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.broadcast.items import BadBroadcast, Item, Klass, parse_cancel, parse_play
from agent.clock import ManualClock
from agent.commands import CommandRejected, CommandRouter, parse_command
from agent.config import parse_config
from agent.logsetup import setup_logging
from agent.outbox import Outbox
from agent.protocol import jws
from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.jws import b64url_encode
from agent.protocol.text import escape, quoted, scrub
from agent.receipts import Receipts
from agent.service import InboundCommand
from tests.test_commands import RecordingUplink

NOW = 1_763_900_000
KEY_TOPIC = "vc/v1/box/box-1/cmd"
FORGED = "2026-12-01 08:00:00,000 INFO agent.broadcast: amplifier relay on"

# every code point, lone surrogates (category Cs) included; hypothesis' default text leaves those out
any_char = st.characters(codec=None, exclude_categories=())
any_text = st.text(any_char, max_size=40) | st.sampled_from(["\ud800", "a\udfffb", "x\n" + FORGED, "\u202e",
                                                              "\x00\x1b[31m", "\\n", "'\"", "撤离"])
long_text = st.builds(lambda c, n: c * n, any_char, st.integers(90_000, 100_000))
json_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3), max_leaves=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ the helpers
@FUZZ
@given(any_text | long_text, st.integers(1, 300))
def test_escape_is_one_bounded_printable_line(text: str, limit: int) -> None:
    out = escape(text, limit)
    assert out.isprintable() and "\n" not in out
    out.encode("utf-8")  # never a lone surrogate
    assert len(out) <= 10 * limit + 30  # \U0010ffff is the longest escape: 10 characters
    assert escape(out, len(out)) == out, "idempotent: a detail escaped twice reads the same"


@FUZZ
@given(any_text)
def test_quoted_can_be_read_back(text: str) -> None:
    out = quoted(text, 1000)
    assert out.isprintable()
    assert ast.literal_eval(out) == text  # a repr-style literal: it reads back exactly


def test_escape_and_quoted_examples() -> None:
    assert escape("cmd-1\n" + FORGED) == "cmd-1\\n" + FORGED
    assert escape("a\ud800b\u202e") == "a\\ud800b\\u202e"
    assert escape("撤离 ok") == "撤离 ok"
    assert escape("x" * 250, 200) == "x" * 200 + "...[50 more chars]"
    assert quoted("it's\n") == "'it\\'s\\n'"
    assert scrub("a\ud800b") == "a\ufffdb"


# ------------------------------------------------------------------------------------------ envelopes
@FUZZ
@given(json_data)
def test_envelope_encode_is_total(data: Any) -> None:
    env = Envelope("box-1", 7, NOW * 1000, MsgClass.RECEIPT, "cmd", {"v": data})
    body = env.encode()
    decoded = Envelope.decode(body)
    assert decoded.id == "box-1:7"
    body.decode("utf-8")  # valid UTF-8, always


def test_envelope_encode_replaces_a_lone_surrogate_and_keeps_the_rest() -> None:
    env = Envelope("box-1", 1, 0, MsgClass.RECEIPT, "cmd", {"detail": "bad \ud800 field", "\udc80": ["撤离"]})
    assert Envelope.decode(env.encode()).data == {"detail": "bad \ufffd field", "\ufffd": ["撤离"]}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(any_text, json_data | long_text, max_size=3), min_size=1, max_size=6))
def test_any_text_goes_through_the_real_outbox(batch: list[dict[str, Any]]) -> None:
    """Envelope `data` with arbitrary strings (surrogates, control characters, 100k characters), committed
    by the real outbox together with an alarm: every row is stored and reads back as valid JSON."""
    async def main(path: Path) -> list[Envelope]:
        outbox = Outbox(path, "box-1", max_bytes=50_000_000, telemetry_ttl_s=3600.0, commit_interval_s=0.01)
        task = asyncio.create_task(outbox.run(lambda: None), name="test.outbox")
        try:
            await outbox.wait_open()
            sends = [outbox.send_nowait(MsgClass.RECEIPT, "cmd", data) for data in batch]
            sends.append(outbox.send_nowait(MsgClass.ALARM, "sos", {"wearer": "W1"}))
            await asyncio.wait_for(asyncio.gather(*sends), 30)
            return [Envelope.decode(r.body) for r in await outbox.next_batch(1000)]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with tempfile.TemporaryDirectory() as tmp:
        got = asyncio.run(main(Path(tmp) / "outbox.db"))
    assert [e.kind for e in got] == ["sos"] + ["cmd"] * len(batch)
    assert [e.data for e in got[1:]] == [json.loads(Envelope("b", 1, 0, MsgClass.RECEIPT, "cmd", d).encode())["data"]
                                         for d in batch]


# ------------------------------------------------------------------------------------------ the log
def test_the_agent_log_formatter_keeps_one_event_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("info")
    try:
        logging.getLogger("agent.test").warning("rejected %s (%s)", "cmd-1\n" + FORGED, "\ud800")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("agent.test").exception("handler for %s raised", "x\ny")
    finally:
        logging.getLogger().handlers[:] = []
    lines = stream.getvalue().splitlines()
    assert "WARNING agent.test: rejected cmd-1\\n" + FORGED + " (\\ud800)" in lines[0]
    assert not any(line.startswith("2026-12-01 08:00:00") for line in lines), "a forged line"
    assert "handler for x\\ny raised" in lines[1] and "Traceback" in lines[2], "tracebacks keep their lines"


@contextlib.asynccontextmanager
async def router(tmp_path: Path) -> AsyncIterator[tuple[CommandRouter, RecordingUplink]]:
    from tests.test_fuzz_protocol import KEYS

    config = parse_config({"box": {"id": "box-1", "profile": "sim", "state_dir": str(tmp_path)},
                           "mqtt": {"url": "mqtt://127.0.0.1:1883"}})
    uplink, clock = RecordingUplink(), ManualClock(wall=NOW)
    r = CommandRouter(config, Receipts(uplink, clock), clock, tmp_path, keys=KEYS, clock_sync=lambda: None)

    async def handler(cmd: Any) -> None:
        return None

    r.register("broadcast.play", handler)
    ready = asyncio.Event()
    task = asyncio.create_task(r.run(ready.set), name="test.router")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield r, uplink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def header_token(header: dict[str, Any], payload: dict[str, Any]) -> bytes:
    return (f"{b64url_encode(json.dumps(header).encode())}.{b64url_encode(json.dumps(payload).encode())}."
            f"{b64url_encode(bytes(64))}").encode()


async def test_a_forged_log_line_in_a_header_or_topic_never_reaches_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    payload = {"v": 1, "id": "c1", "kind": "broadcast.play", "iat": NOW, "exp": NOW + 60, "to": ["box:box-1"],
               "data": {}}
    caplog.set_level(logging.INFO)
    async with router(tmp_path) as (r, uplink):
        await r.on_command(InboundCommand(KEY_TOPIC, header_token(
            {"alg": "EdDSA", "kid": "county-2026", "x\n" + FORGED: 1}, payload), False, NOW))
        await r.on_command(InboundCommand(KEY_TOPIC, header_token(
            {"alg": "EdDSA", "kid": "k\n" + FORGED + "\ud800"}, payload), False, NOW))
        await r.on_command(InboundCommand(KEY_TOPIC + "\n" + FORGED, b"junk", False, NOW))
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "agent.commands"]
    assert sum("rejected" in m for m in messages) == 3
    for m in messages:
        assert "\n" not in m and "\ud800" not in m, m
        m.encode("utf-8")
    details = [x["detail"] for x in uplink.receipts()]
    assert [x["reason"] for x in uplink.receipts()] == ["alg_not_allowed", "unknown_kid", "malformed"]
    assert all(d.isprintable() for d in details), details
    assert "'x\\n2026-12-01" in details[0] and "\\ud800" in details[1]


# ------------------------------------------------------------------------------------------ ids and patterns
def test_a_command_id_or_kind_ending_in_a_newline_is_malformed() -> None:
    base = {"v": 1, "id": "cmd-1", "kind": "broadcast.play", "iat": NOW, "exp": NOW + 60, "to": ["box:b"],
            "data": {}}
    assert parse_command(base, "k").id == "cmd-1"
    for field, value in [("id", "cmd-1\n"), ("kind", "broadcast.play\n"), ("to", ["box:b\n"])]:
        with pytest.raises(CommandRejected) as err:
            parse_command({**base, field: value}, "k")
        assert err.value.reason == "malformed", field


VALIDATION_PATTERNS = [  # (module, name, a value it accepts); with "\n" appended it must refuse it
    ("agent.commands", "ID_RE", "cmd-1"),
    ("agent.commands", "KIND_RE", "broadcast.play"),
    ("agent.protocol.topics", "BOX_ID_RE", "box-1"),
    ("agent.wearables.registry", "_MAC_RE", "AA:BB:CC:DD:EE:FF"),
    ("agent.wearables.registry", "_WEARER_RE", "W1"),
    ("agent.cameras.settings", "CAMERA_ID_RE", "cam-1"),
    ("agent.profile", "_HCI_RE", "hci0"),
    ("agent.broadcast.settings", "_HHMM", "08:30"),
    ("agent.broadcast.service", "_SAFE_NAME", "cmd-1"),
    ("agent.keys", "NAME_RE", "county-2026"),
    ("county.push", "DURATION_RE", "30m"),
    ("drivers.camera.onvif", "_DURATION_RE", "PT10S"),
]


@pytest.mark.parametrize(("module", "name", "good"), VALIDATION_PATTERNS, ids=[p[1] for p in VALIDATION_PATTERNS])
def test_validation_patterns_refuse_a_trailing_newline(module: str, name: str, good: str) -> None:
    import importlib

    pattern: re.Pattern[str] = getattr(importlib.import_module(module), name)
    assert pattern.match(good) and pattern.fullmatch(good)
    assert not pattern.match(good + "\n"), f"{module}.{name} matches {good!r} + newline"


# ------------------------------------------------------------------------------------------ the store
def test_a_cancel_names_a_command_id_or_is_refused() -> None:
    assert parse_cancel({"broadcast": "cmd-1"}) == "cmd-1"
    for junk in ("cmd-1\n", "\ud800", "x" * 129, "", "a b"):
        with pytest.raises(BadBroadcast) as err:
            parse_cancel({"broadcast": junk})
        assert err.value.reason == "bad_data"


def test_a_title_with_lone_surrogates_is_scrubbed_and_its_item_always_stores() -> None:
    req = parse_play({"class": "emergency", "level": 1, "title": "\ud800 flood", "text": "撤离 \udfff"},
                     default_tz="Asia/Shanghai", max_text_chars=500)
    assert (req.title, req.text) == ("\ufffd flood", "撤离 \ufffd")
    item = Item("c1", Klass.EMERGENCY, 1, "t\ud800", "x", "c1.wav", "audio/wav", None, None, None, None, 0, 0.0,
                extra={"\udc80": object()})
    body = item.to_json()
    body.encode("utf-8")
    assert Item.from_json(body).title == "t\ufffd"


def test_a_signed_token_with_non_canonical_base64url_is_one_token_one_encoding() -> None:
    """Same bytes, other spelling: the standard alphabet, or stray bits in the last character."""
    from tests.test_fuzz_protocol import KEY, KEYS

    for i in range(200):  # a token whose signature holds a '-' or '_' (most do)
        token = jws.sign({"v": 1, "id": f"c{i}", "kind": "x", "iat": NOW, "exp": NOW + 1, "to": ["box:b"],
                          "data": {}}, KEY, "county-2026")
        if "-" in token.split(".")[2] or "_" in token.split(".")[2]:
            break
    jws.verify(token, KEYS)
    h, p, s = token.split(".")
    std = s.replace("-", "+").replace("_", "/")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])  # 64 bytes: 86 characters, the last one carries 4 spare (zero) bits
    stray = s[:-1] + alphabet[last | 0b0001]
    assert jws.b64url_decode(s) == jws.b64url_decode(s)
    for variant in (std, stray):
        with pytest.raises(jws.MalformedToken) as err:
            jws.verify(f"{h}.{p}.{variant}", KEYS)
        assert err.value.reason == "malformed" and "base64url" in err.value.detail
