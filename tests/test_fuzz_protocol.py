"""Fuzzing the wire protocol (hypothesis, bounded): JWS verifier, command parser and router, envelopes.

Every rejection must be the layer's own typed error (JwsError, CommandRejected, EnvelopeError), never a
KeyError/TypeError/RecursionError/OverflowError escaping; the router answers any junk with at most one
receipt and never calls a handler, and its receipts stay bounded however much junk arrives.
The wristband codecs are fuzzed in tests/test_codec_fuzz.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import ManualClock
from agent.commands import (
    REJECT_BURST,
    CommandRejected,
    CommandRouter,
    Freshness,
    check_freshness,
    parse_command,
)
from agent.config import parse_config
from agent.protocol import jws
from agent.protocol.commands import Command
from agent.protocol.envelope import Envelope, EnvelopeError, MsgClass
from agent.receipts import Receipts
from agent.service import InboundCommand
from tests.test_commands import RecordingUplink

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_763_900_000
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEYS = {"county-2026": KEY.public_key()}
BOX, GROUP = "box-1", "town-a"

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
b64url = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=120)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def good_payload(**fields: Any) -> dict[str, Any]:
    payload = {"v": 1, "id": "cmd-1", "kind": "broadcast.play", "iat": NOW, "exp": NOW + 3600,
               "to": [f"group:{GROUP}"], "data": {"class": "daily", "level": 3, "text": "hi"}}
    payload.update(fields)
    return payload


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


# ------------------------------------------------------------------------------------------ JWS
@st.composite
def tokens(draw: st.DrawFn) -> bytes:
    """Tokens from plain junk to correctly signed ones with a hostile header or payload."""
    shape = draw(st.sampled_from(["bytes", "parts", "header", "signed", "mutated"]))
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    if shape == "parts":
        return ".".join(draw(st.lists(b64url, min_size=0, max_size=5))).encode()
    if shape == "header":
        # field names and values with newlines, control characters and lone surrogates (issue 11: a "\ud800"
        # field name crashed the agent; a newline in one forged a log line)
        wire_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
        header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "jwk", "crit", "b64"]) | wire_text,
                                      json_values | wire_text))
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(good_payload()).encode())}.{draw(b64url)}".encode()
    payload = draw(json_values) if shape == "signed" else good_payload()
    h = b64(b'{"alg":"EdDSA","kid":"county-2026"}')
    p = b64(json.dumps(payload).encode())
    token = f"{h}.{p}.{b64(KEY.sign(f'{h}.{p}'.encode()))}"
    if shape == "mutated":
        i = draw(st.integers(0, len(token) - 1))
        token = token[:i] + draw(st.sampled_from(["", "A", ".", "=", "é", "\x00", "-"])) + token[i + 1:]
    return token.encode()


@FUZZ
@given(tokens())
def test_jws_verify_raises_only_jws_errors(token: bytes) -> None:
    for candidate in (token, token.decode("latin-1")):
        try:
            header, payload = jws.verify(candidate, KEYS)
        except jws.JwsError as exc:
            assert exc.reason in {"malformed", "too_large", "alg_not_allowed", "unknown_kid", "bad_signature"}
        else:
            assert header["alg"] == "EdDSA" and isinstance(payload, dict)
        assert jws.unverified_payload(candidate) is None or isinstance(jws.unverified_payload(candidate), dict)


@pytest.mark.parametrize("where", ["header", "payload"])
def test_jws_deeply_nested_json_is_malformed_not_a_crash(where: str) -> None:
    """Before the signature is checked the box decodes the header, and the payload to name the command in
    the receipt: JSON nested past Python's recursion limit must be a typed refusal (it was a RecursionError
    escaping into the link's command task)."""
    h = b64(b'{"alg":"EdDSA","kid":"county-2026"}')
    p = b64(json.dumps(good_payload()).encode())
    if where == "header":
        h = b64(deep(700))[: jws.MAX_HEADER_BYTES]
    else:
        p = b64(deep(100_000))
    token = f"{h}.{p}.{b64(bytes(64))}"
    assert jws.unverified_payload(token) is None
    with pytest.raises(jws.JwsError):
        jws.verify(token, KEYS)
    signed = jws.sign({"nested": json.loads(deep(50))}, KEY, "county-2026")  # fine when it is sane
    assert jws.verify(signed, KEYS)[1]["nested"] == json.loads(deep(50))


def test_jws_oversized_token_refused_before_decoding() -> None:
    with pytest.raises(jws.TokenTooLarge):
        jws.verify(b"A" * (jws.MAX_TOKEN_BYTES + 1), KEYS)


# ------------------------------------------------------------------------------------------ commands
@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """A good payload with some fields replaced by arbitrary JSON, removed, or added; or any JSON at all."""
    if draw(st.booleans()):
        return draw(json_values)
    payload = good_payload()
    for name in draw(st.lists(st.sampled_from([*sorted(payload), "extra"]), max_size=4)):
        if draw(st.booleans()):
            payload[name] = draw(json_values | st.integers(-(2**80), 2**80))
        else:
            payload.pop(name, None)
    return payload


@FUZZ
@given(payloads())
def test_parse_command_raises_only_command_rejected(payload: Any) -> None:
    if not isinstance(payload, dict):
        return  # jws._json only ever hands over an object
    try:
        cmd = parse_command(payload, "county-2026")
    except CommandRejected as exc:
        assert exc.reason == "malformed"
        return
    assert isinstance(cmd, Command) and cmd.exp > cmd.iat


@FUZZ
@given(iat=st.integers(-(2**64), 2**64), life=st.integers(1, 31 * 86400), now=st.floats(allow_nan=False),
       floor=st.floats(0, 2**40), urgent=st.booleans())
def test_freshness_decides_without_crashing(iat: int, life: int, now: float, floor: float, urgent: bool) -> None:
    data = {"class": "emergency" if urgent else "daily"}
    cmd = Command("c", "broadcast.play", iat, iat + life, (f"box:{BOX}",), data, "k")
    try:
        assert isinstance(check_freshness(cmd, now, floor), Freshness)
    except CommandRejected as exc:
        assert exc.reason in {"not_yet_valid", "expired", "clock_unsynchronised"}


@contextlib.asynccontextmanager
async def router_running(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[CommandRouter, RecordingUplink,
                                                                                      list[Command]]]:
    config = parse_config({"box": {"id": BOX, "profile": "sim", "groups": [GROUP], "state_dir": str(tmp_path)},
                           "mqtt": {"url": "mqtt://127.0.0.1:1883"}})
    uplink, calls = RecordingUplink(), []
    router = CommandRouter(config, Receipts(uplink, clock), clock, tmp_path, keys=KEYS)

    async def handler(cmd: Command) -> None:
        calls.append(cmd)

    router.register("broadcast.play", handler)
    ready = asyncio.Event()
    task = asyncio.create_task(router.run(ready.set), name="test.router")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield router, uplink, calls
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(tokens(), st.sampled_from([f"vc/v1/group/{GROUP}/cmd", f"vc/v1/box/{BOX}/cmd",
                                                             "vc/v1/box/other/cmd", "x"]), st.booleans()),
                      min_size=1, max_size=20),
       wall=st.sampled_from([NOW, 0.0, NOW - 3600]))
async def test_router_answers_junk_with_one_receipt_and_never_acts(tmp_path_factory: pytest.TempPathFactory,
                                                                   batch: list[tuple[bytes, str, bool]],
                                                                   wall: float) -> None:
    clock = ManualClock(wall=wall)
    async with router_running(tmp_path_factory.mktemp("router"), clock) as (router, uplink, calls):
        for token, topic, retained in batch:
            before = len(uplink.sent)
            await router.on_command(InboundCommand(topic, token, retained, wall))
            new = uplink.receipts()[before:]
            assert len(new) <= 2  # rejected, or received (+ nothing else: the handler only records)
            assert all(r["state"] in ("rejected", "received") for r in new)
            for r in new:  # a detail is one printable line, and every receipt encodes
                assert r.get("detail", "").isprintable() and len(r.get("detail", "")) <= 250, r
            for env in uplink.sent[before:]:
                env.encode()
    accepted = [r for r in uplink.receipts() if r["state"] == "received"]
    assert len(calls) == len(accepted) <= 1, "only the one correctly signed, addressed command ever acts"


async def test_a_flood_of_junk_gives_bounded_receipts(tmp_path: Path) -> None:
    clock = ManualClock(wall=NOW)
    async with router_running(tmp_path, clock) as (router, uplink, calls):
        for i in range(1000):
            await router.on_command(InboundCommand(f"vc/v1/group/{GROUP}/cmd", b"junk %d" % i, False, NOW))
        assert len(uplink.receipts()) == REJECT_BURST, "the limiter holds the rest back (counted)"
        assert router.counters["rejected.malformed"] == 1000
        clock.advance(10)
        await router.on_command(InboundCommand(f"vc/v1/group/{GROUP}/cmd", b"junk", False, NOW))
    assert uplink.receipts()[-1]["suppressed"] == 1000 - REJECT_BURST
    assert not calls


async def test_absurd_signed_times_are_malformed_not_a_store_crash(tmp_path: Path) -> None:
    """A signed emergency with iat near 2**70 while the box clock is unset: it used to pass the clock policy
    and crash the replay store with OverflowError (and would have raised the time floor for good)."""
    clock = ManualClock(wall=0.0)
    async with router_running(tmp_path, clock) as (router, uplink, calls):
        payload = good_payload(iat=2**70, exp=2**70 + 60, data={"class": "emergency", "level": 1, "text": "x"})
        await router.on_command(InboundCommand(f"vc/v1/group/{GROUP}/cmd", jws.sign(payload, KEY, "county-2026")
                                               .encode(), False, 0.0))
    assert [(r["state"], r["reason"]) for r in uplink.receipts()] == [("rejected", "malformed")]
    assert not calls


# ------------------------------------------------------------------------------------------ envelopes
envelope_fields = st.fixed_dictionaries({}, optional={
    "v": json_values | st.just(1), "id": json_values | st.just("box-1:1"), "box": json_values | st.just("box-1"),
    "seq": json_values | st.just(1) | st.just(float("inf")), "ts": json_values | st.just(1e300),
    "class": json_values | st.sampled_from(["alarm", "event", "telemetry", "receipt"]),
    "kind": json_values, "data": json_values})


@FUZZ
@given(st.one_of(st.binary(max_size=200), envelope_fields.map(lambda d: json.dumps(d).encode()),
                 st.integers(1, 200_000).map(deep)))
def test_envelope_decode_raises_only_envelope_error(raw: bytes) -> None:
    try:
        env = Envelope.decode(raw)
    except EnvelopeError:
        return
    assert Envelope.decode(env.encode()) == env


@FUZZ
@given(box=st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), seq=st.integers(1, 2**62), ts=st.integers(0, 2**62),
       cls=st.sampled_from(list(MsgClass)), kind=st.from_regex(r"\A[a-z_]{1,20}\Z"),
       data=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_envelope_round_trips(box: str, seq: int, ts: int, cls: MsgClass, kind: str, data: dict[str, Any]) -> None:
    env = Envelope(box, seq, ts, cls, kind, data)
    back = Envelope.decode(env.encode())
    assert (back.box, back.seq, back.ts, back.cls, back.kind) == (box, seq, ts, cls, kind)
