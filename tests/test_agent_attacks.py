"""Hijack attempts against the whole agent (build_agent, sim profile: relay and player twins), over mosquitto.

Each bad command must end in exactly one `rejected` receipt naming the reason, the relay never switched
on and nothing played; a good command then plays, proving the box was listening all along.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.app import Agent, build_agent
from agent.config import parse_config
from agent.protocol import jws
from agent.protocol.jws import b64url_encode
from tests.support import Collector, Mosquitto, agent_config_dict, wait_until

pytestmark = pytest.mark.timeout(120)
BOX, KID = "box-1", "county-2026"


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def payload(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"v": 1, "id": str(uuid.uuid4()), "kind": "broadcast.play", "iat": now, "exp": now + 600,
            "to": [f"box:{BOX}"], "data": {"class": "emergency", "level": 1, "title": "t", "text": "撤离",
                                           "start": None, "end": None, "volume": None}}
    body.update(over)
    return body


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    """The agent up with its command subscriptions in force at the broker. The link says "connected" once it
    has sent SUBSCRIBE, not once the broker has taken it: a command published on another connection then can
    be handled first and, not retained, goes to nobody (a loaded machine showed it). The box's own `online`
    state goes out after the SUBSCRIBE on the same connection, so the broker has the subscription by the
    time that state reaches a watcher."""
    watcher = Collector(agent.link.config.mqtt.url[0], [f"vc/v1/box/{BOX}/state"]).start()
    task = asyncio.create_task(agent.supervisor.run(), name="agent")
    try:
        await asyncio.wait_for(agent.supervisor.all_ready.wait(), 20)
        await asyncio.to_thread(wait_until, lambda: agent.link.state.value == "connected", 20)
        await asyncio.to_thread(watcher.wait_for, lambda ms: [m for m in ms if not m.retain
                                                              and m.json().get("state") == "online"])
        yield agent
    finally:
        watcher.stop()
        agent.supervisor.request_stop()
        assert await asyncio.wait_for(task, 20) == 0


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / f"{KID}.pub"
    path.write_bytes(pem(key))
    return key, path


def forged(key: Ed25519PrivateKey) -> str:  # signed by somebody else's key under the county's kid
    return jws.sign(payload(), Ed25519PrivateKey.generate(), KID)


def alg_none(key: Ed25519PrivateKey) -> str:
    head = b64url_encode(json.dumps({"alg": "none", "kid": KID}).encode())
    return f"{head}.{b64url_encode(json.dumps(payload()).encode())}."


def surrogate_header(key: Ed25519PrivateKey) -> str:
    """A header field name that is a lone surrogate: valid JSON (`"\\ud800"`), not encodable as UTF-8. Its
    refusal detail used to carry it raw: Envelope.encode raised inside the outbox commit, the agent exited 1."""
    head = b64url_encode(json.dumps({"alg": "EdDSA", "kid": KID, "\ud800": 1}).encode())
    return f"{head}.{b64url_encode(json.dumps(payload()).encode())}.{b64url_encode(b'x' * 64)}"


def newline_header(key: Ed25519PrivateKey) -> str:
    """A header field name that forges a log line ("... INFO agent.broadcast: amplifier relay on")."""
    head = b64url_encode(json.dumps({"alg": "EdDSA", "kid": KID, FORGED: 1}).encode())
    return f"{head}.{b64url_encode(json.dumps(payload()).encode())}.{b64url_encode(b'x' * 64)}"


FORGED = "x\n2026-12-01 08:00:00,000 INFO agent.broadcast: amplifier relay on"


def sign_ascii(body: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """Sign with the payload as ASCII JSON (`\\uXXXX` escapes): how a console can sign text UTF-8 cannot hold."""
    head = b64url_encode(json.dumps({"alg": "EdDSA", "kid": KID}, separators=(",", ":")).encode())
    body64 = b64url_encode(json.dumps(body, ensure_ascii=True).encode())
    return f"{head}.{body64}.{b64url_encode(key.sign(f'{head}.{body64}'.encode()))}"


def bad_audio(sha: str | None, size: int) -> Callable[[Ed25519PrivateKey], str]:
    def make(key: Ed25519PrivateKey) -> str:
        data = b"RIFF" + b"\0" * size
        audio = {"mime": "audio/wav", "sha256": sha or hashlib.sha256(data).hexdigest(),
                 "b64": base64.b64encode(data).decode()}
        body = payload()
        body["data"] = {**body["data"], "audio": audio}
        return jws.sign(body, key, KID)
    return make


# (what, how to make the token, topic, retained, expected reason)
ATTACKS: list[tuple[str, Callable[[Ed25519PrivateKey], str], str, bool, str]] = [
    ("forged signature", forged, f"vc/v1/box/{BOX}/cmd", False, "bad_signature"),
    ("unknown kid", lambda k: jws.sign(payload(), k, "someone-else"), f"vc/v1/box/{BOX}/cmd", False, "unknown_kid"),
    ("alg none", alg_none, f"vc/v1/box/{BOX}/cmd", False, "alg_not_allowed"),
    ("expired", lambda k: jws.sign(payload(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), k, KID),
     f"vc/v1/box/{BOX}/cmd", False, "expired"),
    ("for another box, re-published on ours",
     lambda k: jws.sign(payload(to=["box:box-2"]), k, KID), f"vc/v1/box/{BOX}/cmd", False, "not_addressed"),
    ("on a group topic this box does not belong to",
     lambda k: jws.sign(payload(to=["group:other-town"]), k, KID), "vc/v1/group/other-town/cmd", False, ""),
    ("retained", lambda k: jws.sign(payload(), k, KID), f"vc/v1/box/{BOX}/cmd", True, "retained"),
    ("hash mismatch", bad_audio("0" * 64, 1000), f"vc/v1/box/{BOX}/cmd", False, "hash_mismatch"),
    ("lone surrogate header field", surrogate_header, f"vc/v1/box/{BOX}/cmd", False, "alg_not_allowed"),
    ("newline header field", newline_header, f"vc/v1/box/{BOX}/cmd", False, "alg_not_allowed"),
    ("id ending in a newline", lambda k: jws.sign(payload(id="cmd-1\n"), k, KID), f"vc/v1/box/{BOX}/cmd", False,
     "malformed"),
]


@pytest.mark.parametrize(("what", "make", "topic", "retain", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_attack_is_refused_relay_never_on(tmp_path: Path, broker: Mosquitto, keys: tuple, what: str,
                                                make: Callable, topic: str, retain: bool, reason: str) -> None:
    key, pub = keys
    raw = agent_config_dict(tmp_path / "state", broker.url, trust={"keys": {KID: str(pub)}},
                            broadcast={"warmup_s": 0.0, "off_delay_s": 0.05, "chime": ""})
    agent = build_agent(parse_config(raw))
    county = Collector(broker.url, ["vc/v1/box/+/up/receipt/#"]).start()
    token = make(key)
    try:
        async with running(agent):
            county.publish(topic, token, retain=retain)
            if reason:
                got = await asyncio.to_thread(county.wait_for, lambda ms: [m.json()["data"] for m in ms])
                # a hash mismatch is found after the signature checked out: received, then rejected
                want = ["received", "rejected"] if reason == "hash_mismatch" else ["rejected"]
                await asyncio.to_thread(county.wait_for, lambda ms: len(ms) >= len(want))
                got = [m.json()["data"] for m in county.snapshot()]
                assert [r["state"] for r in got] == want, what
                assert got[-1]["reason"] == reason
            # then a genuine command plays: the box was listening, and only the genuine one moved the relay
            good = payload()
            county.publish(f"vc/v1/box/{BOX}/cmd", jws.sign(good, key, KID))
            await asyncio.to_thread(county.wait_for, lambda ms: any(
                m.json()["data"] == {**m.json()["data"], "cmd": good["id"], "state": "finished"} for m in ms), 30)
    finally:
        if retain:
            county.publish(topic, b"", retain=True)
        county.stop()
    hw = agent.context.hardware
    assert hw.relay.events() == ["off", "on", "off"], f"{what}: the relay moved only for the genuine command"
    plays = [name for event, name, _volume in hw.player.events() if event == "play"]
    assert plays == [f"{good['id']}.wav"], f"{what}: only the genuine command played: {hw.player.events()}"
    bad_id = json.loads(jws.b64url_decode(token.split(".")[1]))["id"]
    if bad_id.endswith("\n"):
        bad_id = None  # an id that is not one: the receipt says null rather than echo it
    by_cmd: dict[str | None, list[str]] = {}
    for m in county.snapshot():
        by_cmd.setdefault(m.json()["data"]["cmd"], []).append(m.json()["data"]["state"])
    assert by_cmd.pop(good["id"])[-1] == "finished"
    want = ["received", "rejected"] if reason == "hash_mismatch" else ["rejected"]
    assert by_cmd == ({bad_id: want} if reason else {}), what


def receipts_by_cmd(county: Collector) -> dict[str, list[dict[str, Any]]]:
    by_cmd: dict[str, list[dict[str, Any]]] = {}
    for m in county.snapshot():
        data = m.json()["data"]
        by_cmd.setdefault(data["cmd"], []).append(data)
    return by_cmd


async def test_refusal_of_untrusted_header_text_keeps_the_agent_up_and_escaped(
        tmp_path: Path, broker: Mosquitto, keys: tuple, caplog: pytest.LogCaptureFixture) -> None:
    """Item 1 and 2 of issue 11, through the whole agent: a lone-surrogate header field and a newline header
    field are refused with an escaped, bounded detail, no log line is forged, and a genuine emergency then
    plays (the agent kept running; `running` checks it exits 0)."""
    key, pub = keys
    raw = agent_config_dict(tmp_path / "state", broker.url, trust={"keys": {KID: str(pub)}},
                            broadcast={"warmup_s": 0.0, "off_delay_s": 0.05, "chime": ""})
    agent = build_agent(parse_config(raw))
    county = Collector(broker.url, ["vc/v1/box/+/up/receipt/#"]).start()
    bad = [surrogate_header(key), newline_header(key)]
    good = payload()
    caplog.set_level(logging.INFO)
    try:
        async with running(agent):
            for token in bad:
                county.publish(f"vc/v1/box/{BOX}/cmd", token)
            county.publish(f"vc/v1/box/{BOX}/cmd", jws.sign(good, key, KID))
            await asyncio.to_thread(county.wait_for, lambda ms: any(
                m.json()["data"]["cmd"] == good["id"] and m.json()["data"]["state"] == "finished" for m in ms), 30)
    finally:
        county.stop()
    by_cmd = receipts_by_cmd(county)
    ids = [json.loads(jws.b64url_decode(t.split(".")[1]))["id"] for t in bad]
    details = []
    for cmd_id in ids:
        (r,) = by_cmd[cmd_id]
        assert (r["state"], r["reason"]) == ("rejected", "alg_not_allowed")
        details.append(r["detail"])
    assert details[0] == "header field(s) not allowed: '\\ud800'"
    assert "\n" not in details[1] and "'x\\n2026-12-01" in details[1]
    assert [d["state"] for d in by_cmd[good["id"]]][-1] == "finished"
    text = "\n".join(logging.Formatter("%(levelname)s %(name)s: %(message)s").format(r) for r in caplog.records)
    assert not any(line.startswith("2026-12-01") for line in text.splitlines()), "a forged log line"
    assert "\ud800" not in text and "\\ud800" in text


async def test_a_signed_title_with_a_lone_surrogate_plays_and_is_stored(tmp_path: Path, broker: Mosquitto,
                                                                        keys: tuple) -> None:
    """A signed emergency whose title holds a lone surrogate crashed the agent in BroadcastStore.save, after
    the relay was switched on. It plays now (the title is scrubbed), the relay goes off after it, and the
    next command is obeyed."""
    key, pub = keys
    raw = agent_config_dict(tmp_path / "state", broker.url, trust={"keys": {KID: str(pub)}},
                            broadcast={"warmup_s": 0.0, "off_delay_s": 0.05, "chime": ""})
    agent = build_agent(parse_config(raw))
    county = Collector(broker.url, ["vc/v1/box/+/up/receipt/#"]).start()
    odd, good = payload(), payload()
    odd["data"] = {**odd["data"], "title": "\ud800 flood \udfff", "text": "撤离 \ud83d"}
    try:
        async with running(agent):
            county.publish(f"vc/v1/box/{BOX}/cmd", sign_ascii(odd, key))
            await asyncio.to_thread(county.wait_for, lambda ms: any(
                m.json()["data"]["cmd"] == odd["id"] and m.json()["data"]["state"] == "finished" for m in ms), 30)
            county.publish(f"vc/v1/box/{BOX}/cmd", jws.sign(good, key, KID))
            await asyncio.to_thread(county.wait_for, lambda ms: any(
                m.json()["data"]["cmd"] == good["id"] and m.json()["data"]["state"] == "finished" for m in ms), 30)
    finally:
        county.stop()
    by_cmd = receipts_by_cmd(county)
    assert [r["state"] for r in by_cmd[odd["id"]]] == ["received", "started", "finished"]
    hw = agent.context.hardware
    assert not hw.relay.is_on and hw.relay.events()[-1] == "off"
    plays = [name for event, name, _volume in hw.player.events() if event == "play"]
    assert plays == [f"{odd['id']}.wav", f"{good['id']}.wav"]
