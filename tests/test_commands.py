"""The command router: a real SQLite replay store, a ManualClock, an in-test Uplink recorder.

Every refusal must produce exactly one `rejected` receipt with its reason and never call the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import ManualClock
from agent.commands import (
    MAX_LIFETIME_S,
    UNSYNCHRONISED_BEFORE,
    CommandFailed,
    CommandRouter,
    check_freshness,
    load_trust_keys,
    parse_command,
)
from agent.config import ConfigError, parse_config
from agent.keys import new_keypair
from agent.protocol import jws
from agent.protocol.commands import Command
from agent.protocol.envelope import Envelope, MsgClass
from agent.receipts import Receipts
from agent.service import InboundCommand

NOW = 1_763_900_000
BOX, GROUP = "lhk-menglou-001", "town-menglou"
MY_TOPIC, GROUP_TOPIC = f"vc/v1/box/{BOX}/cmd", f"vc/v1/group/{GROUP}/cmd"


class RecordingUplink:
    """A test double of agent.service.Uplink: records what would go to the county."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
        env = Envelope(BOX, len(self.sent) + 1, ts_ms or 0, cls, kind, data)
        self.sent.append(env)
        return env

    def send_nowait(self, cls: MsgClass, kind: str, data: dict[str, Any],
                    ts_ms: int | None = None) -> asyncio.Future[Envelope]:
        return asyncio.ensure_future(self.send(cls, kind, data, ts_ms))

    def receipts(self) -> list[dict[str, Any]]:
        return [e.data for e in self.sent if e.cls is MsgClass.RECEIPT and e.kind == "cmd"]


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.clock = ManualClock(wall=NOW)
        self.uplink = RecordingUplink()
        self.keys = {}
        for kid in ("county-2026", "county-2027"):
            key_path, _pub = new_keypair(kid, tmp_path / "keys")
            from agent.keys import load_private_key
            self.keys[kid] = load_private_key(key_path)
        self.calls: list[Command] = []
        self.task: asyncio.Task[None] | None = None

    def config(self, kids: tuple[str, ...] = ("county-2026", "county-2027")) -> Any:
        return parse_config({
            "box": {"id": BOX, "profile": "sim", "groups": [GROUP], "state_dir": str(self.tmp / "state")},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "trust": {"keys": {k: str(self.tmp / "keys" / f"{k}.pub") for k in kids}},
        })

    def router(self, kids: tuple[str, ...] = ("county-2026", "county-2027"), **kw: Any) -> CommandRouter:
        router = CommandRouter(self.config(kids), Receipts(self.uplink, self.clock), self.clock, self.tmp / "state",
                               **kw)

        async def handler(cmd: Command) -> None:
            self.calls.append(cmd)

        router.register("broadcast.play", handler)
        router.register("broadcast.cancel", handler)
        return router

    def token(self, kid: str = "county-2026", key: Ed25519PrivateKey | None = None, **fields: Any) -> bytes:
        payload = {"v": 1, "id": "cmd-1", "kind": "broadcast.play", "iat": NOW, "exp": NOW + 3600,
                   "to": [f"group:{GROUP}"], "data": {"class": "daily", "level": 3, "text": "hi"}}
        payload.update(fields)
        return jws.sign(payload, key or self.keys[kid], kid).encode()


@contextlib.asynccontextmanager
async def running(router: CommandRouter) -> AsyncIterator[CommandRouter]:
    ready = asyncio.Event()
    task = asyncio.create_task(router.run(ready.set), name="test.router")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield router
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def msg(payload: bytes, topic: str = GROUP_TOPIC, retained: bool = False) -> InboundCommand:
    return InboundCommand(topic, payload, retained, NOW)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


async def test_accepted(rig: Rig) -> None:
    async with running(rig.router()) as router:
        await router.on_command(msg(rig.token()))
    assert rig.uplink.receipts() == [{"cmd": "cmd-1", "state": "received", "kind": "broadcast.play"}]
    assert len(rig.calls) == 1
    assert rig.calls[0].id == "cmd-1" and rig.calls[0].kid == "county-2026" and rig.calls[0].to == (f"group:{GROUP}",)
    assert rig.calls[0].data["text"] == "hi"


async def test_accepted_on_box_topic(rig: Rig) -> None:
    async with running(rig.router()) as router:
        await router.on_command(msg(rig.token(to=[f"box:{BOX}"]), topic=MY_TOPIC))
    assert [r["state"] for r in rig.uplink.receipts()] == ["received"]
    assert len(rig.calls) == 1


async def test_rotation_two_keys(rig: Rig) -> None:
    async with running(rig.router()) as router:
        await router.on_command(msg(rig.token("county-2026", id="a")))
        await router.on_command(msg(rig.token("county-2027", id="b")))
    assert [c.kid for c in rig.calls] == ["county-2026", "county-2027"]
    # after rotation the old key is dropped from [trust.keys]: its commands are refused
    rig.calls.clear()
    rig.uplink.sent.clear()
    async with running(rig.router(kids=("county-2027",))) as router:
        await router.on_command(msg(rig.token("county-2026", id="c")))
        await router.on_command(msg(rig.token("county-2027", id="d")))
    assert [c.id for c in rig.calls] == ["d"]
    assert rig.uplink.receipts()[0] == {"cmd": "c", "state": "rejected", "reason": "unknown_kid",
                                        "detail": "kid 'county-2026' is not a trusted key"}


REFUSALS = [
    # (name, how to build the message, expected reason, expected cmd id in the receipt)
    ("bad_signature", lambda r: msg(r.token(key=Ed25519PrivateKey.generate())), "bad_signature", "cmd-1"),
    ("unknown_kid", lambda r: msg(r.token(kid="county-1999", key=Ed25519PrivateKey.generate())), "unknown_kid",
     "cmd-1"),
    ("garbage", lambda r: msg(b"not a token at all"), "malformed", None),
    ("alg_none", lambda r: msg(_alg_none()), "alg_not_allowed", "cmd-1"),
    ("expired", lambda r: msg(r.token(iat=NOW - 7200, exp=NOW - 1)), "expired", "cmd-1"),
    ("expired_exactly_now", lambda r: msg(r.token(iat=NOW - 7200, exp=NOW)), "expired", "cmd-1"),
    ("not_yet_valid", lambda r: msg(r.token(iat=NOW + 121, exp=NOW + 3600)), "not_yet_valid", "cmd-1"),
    ("not_addressed", lambda r: msg(r.token(to=["group:town-other", "box:someone-else"])), "not_addressed",
     "cmd-1"),
    ("other_box_topic", lambda r: msg(r.token(to=[f"box:{BOX}"]), topic="vc/v1/box/someone-else/cmd"),
     "not_addressed", "cmd-1"),
    ("other_prefix", lambda r: msg(r.token(), topic=f"vc/v2/group/{GROUP}/cmd"), "not_addressed", "cmd-1"),
    ("retained", lambda r: msg(r.token(), retained=True), "retained", "cmd-1"),
    ("unknown_kind", lambda r: msg(r.token(kind="sirens.all_on")), "unknown_kind", "cmd-1"),
    ("v2", lambda r: msg(r.token(v=2)), "malformed", "cmd-1"),
    ("iat_string", lambda r: msg(r.token(iat="now")), "malformed", "cmd-1"),
    ("to_string", lambda r: msg(r.token(to=f"group:{GROUP}")), "malformed", "cmd-1"),
    ("no_data", lambda r: msg(r.token(data=None)), "malformed", "cmd-1"),
    ("lifetime", lambda r: msg(r.token(exp=NOW + 400 * 86400)), "malformed", "cmd-1"),
    ("bad_id", lambda r: msg(r.token(id="has space")), "malformed", None),
]


def _alg_none() -> bytes:
    import json

    h = jws.b64url_encode(json.dumps({"alg": "none", "kid": "county-2026"}).encode())
    p = jws.b64url_encode(json.dumps({"v": 1, "id": "cmd-1", "kind": "broadcast.play", "iat": NOW,
                                      "exp": NOW + 60, "to": [f"group:{GROUP}"], "data": {}}).encode())
    return f"{h}.{p}.".encode()


@pytest.mark.parametrize(("name", "make", "reason", "cmd_id"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refusals(rig: Rig, caplog: pytest.LogCaptureFixture, name: str, make: Any, reason: str,
                        cmd_id: str | None) -> None:
    message = make(rig)
    with caplog.at_level(logging.INFO, logger="agent.commands"):
        async with running(rig.router()) as router:
            caplog.clear()
            await router.on_command(message)
    receipts = rig.uplink.receipts()
    assert len(receipts) == 1, receipts
    assert receipts[0]["state"] == "rejected" and receipts[0]["reason"] == reason
    assert receipts[0]["cmd"] == cmd_id
    assert rig.calls == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert reason in text
    token_text = message.payload.decode(errors="replace")
    signature = token_text.split(".")[-1]
    assert token_text not in text and (not signature or signature not in text)  # never the token or signature


async def test_replay_and_across_reopen(rig: Rig) -> None:
    token = rig.token()
    async with running(rig.router()) as router:
        await router.on_command(msg(token))
        await router.on_command(msg(token))
        # the same id on the box's own topic too (a county that targets both box and group)
        await router.on_command(msg(rig.token(to=[f"box:{BOX}"]), topic=MY_TOPIC))
    async with running(rig.router()) as router:  # a restart: a new router over the same SQLite file
        await router.on_command(msg(token))
    assert [(r["state"], r.get("reason")) for r in rig.uplink.receipts()] == [
        ("received", None), ("rejected", "replay"), ("rejected", "replay"), ("rejected", "replay")]
    assert len(rig.calls) == 1


async def test_ids_pruned_after_expiry_but_then_expired(rig: Rig) -> None:
    token = rig.token(exp=NOW + 600)
    async with running(rig.router()) as router:
        await router.on_command(msg(token))
        rig.clock.advance(600 + 3600 + 1)
        assert await router.prune() == 1
        await router.on_command(msg(token))
    assert [(r["state"], r.get("reason")) for r in rig.uplink.receipts()] == [("received", None),
                                                                            ("rejected", "expired")]


async def test_skew_allowance(rig: Rig) -> None:
    async with running(rig.router()) as router:
        await router.on_command(msg(rig.token(id="edge", iat=NOW + 120)))
    assert [r["state"] for r in rig.uplink.receipts()] == ["received"]


async def test_handler_failures_become_failed_receipts(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    router = CommandRouter(rig.config(), Receipts(rig.uplink, rig.clock), rig.clock, rig.tmp / "state")

    async def play(cmd: Command) -> None:
        raise CommandFailed("hash_mismatch", "sha256 does not match the audio")

    async def cancel(cmd: Command) -> None:
        raise RuntimeError("bug")

    router.register("broadcast.play", play)
    router.register("broadcast.cancel", cancel)
    with caplog.at_level(logging.WARNING, logger="agent.commands"):
        async with running(router):
            await router.on_command(msg(rig.token(id="p")))
            await router.on_command(msg(rig.token(id="c", kind="broadcast.cancel", data={"all": True})))
    assert rig.uplink.receipts() == [
        {"cmd": "p", "state": "received", "kind": "broadcast.play"},
        {"cmd": "p", "state": "failed", "reason": "hash_mismatch", "detail": "sha256 does not match the audio"},
        {"cmd": "c", "state": "received", "kind": "broadcast.cancel"},
        {"cmd": "c", "state": "failed", "reason": "handler_error", "detail": "RuntimeError"},
    ]
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)  # with traceback


async def test_register_twice_is_a_bug(rig: Rig) -> None:
    router = rig.router()
    with pytest.raises(ValueError):
        router.register("broadcast.play", rig.calls.append)  # type: ignore[arg-type]


async def test_rejections_are_rate_limited(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    async with running(rig.router()) as router:
        for _ in range(100):
            await router.on_command(msg(b"junk"))
        assert len(rig.uplink.receipts()) == 60
        rig.clock.advance(5)  # the bucket refills at 1/s
        await router.on_command(msg(b"junk"))
    last = rig.uplink.receipts()[-1]
    assert last["reason"] == "malformed" and last["suppressed"] == 40
    assert router.counters["rejected.malformed"] == 101


class TestClockPolicy:
    """Pure: check_freshness over a box clock that may be unsynchronised."""

    def cmd(self, kind: str = "broadcast.play", cls: str = "emergency", iat: int = NOW) -> Command:
        return parse_command({"v": 1, "id": "x", "kind": kind, "iat": iat, "exp": iat + 3600,
                              "to": ["box:b"], "data": {"class": cls}}, "k")

    def test_synchronised(self) -> None:
        assert check_freshness(self.cmd(), NOW, 0).synchronised

    def test_unsynchronised_emergency_accepted_with_note(self) -> None:
        fresh = check_freshness(self.cmd(), 86400.0, 0)
        assert not fresh.synchronised and fresh.note == "clock_unsynchronised"
        assert check_freshness(self.cmd(kind="broadcast.cancel", cls=""), 86400.0, 0).note == "clock_unsynchronised"

    def test_unsynchronised_daily_refused(self) -> None:
        from agent.commands import CommandRejected

        with pytest.raises(CommandRejected) as err:
            check_freshness(self.cmd(cls="daily"), 86400.0, 0)
        assert err.value.reason == "clock_unsynchronised"

    def test_unsynchronised_old_command_expired_by_floor(self) -> None:
        from agent.commands import CommandRejected

        with pytest.raises(CommandRejected) as err:  # captured long ago, replayed to a box that lost its clock
            check_freshness(self.cmd(iat=NOW - 86400), 86400.0, floor=NOW)
        assert err.value.reason == "expired"

    def test_clock_behind_the_floor_is_unsynchronised(self) -> None:
        later = UNSYNCHRONISED_BEFORE + 10 * 86400
        fresh = check_freshness(self.cmd(iat=later), UNSYNCHRONISED_BEFORE + 86400, floor=later - 60)
        assert fresh.note == "clock_unsynchronised"

    def test_ntp_synchronised_clock_holds_the_contract_for_emergencies(self) -> None:
        from agent.commands import CommandRejected

        with pytest.raises(CommandRejected) as err:  # an hour ahead of a disciplined clock: not a behind clock
            check_freshness(self.cmd(iat=NOW + 3600), NOW, 0, kernel_synced=True)
        assert err.value.reason == "not_yet_valid" and "NTP" in err.value.detail
        assert check_freshness(self.cmd(iat=NOW + 3600), NOW, 0, kernel_synced=False).note == "clock_behind"

    def test_ntp_synchronised_clock_overrules_a_floor_ahead_of_it(self) -> None:
        fresh = check_freshness(self.cmd(cls="daily"), NOW, floor=NOW + 86400, kernel_synced=True)
        assert fresh.synchronised and fresh.note is None

    def test_signed_time_moves_the_floor_a_bounded_step(self) -> None:
        from agent.commands import MAX_FLOOR_STEP_S, MAX_SKEW_S, next_floor

        assert next_floor(0, NOW, NOW) == NOW
        assert next_floor(NOW, NOW - 60, NOW) == NOW  # never down
        assert next_floor(NOW - 60, 4_000_000_000, NOW) == NOW + MAX_SKEW_S  # never past a plausible clock
        assert next_floor(NOW - 60, 4_000_000_000, 30.0) == NOW - 60 + MAX_FLOOR_STEP_S  # 1970: one step
        assert next_floor(0, 4_000_000_000, 30.0, known=NOW) == NOW + MAX_FLOOR_STEP_S

    def test_no_token_is_valid_for_more_than_31_days_on_the_box_clock(self) -> None:
        from agent.commands import CommandRejected

        cmd = parse_command({"v": 1, "id": "x", "kind": "broadcast.play", "iat": NOW + 20 * 86400,
                             "exp": NOW + 32 * 86400, "to": ["box:b"], "data": {"class": "emergency"}}, "k")
        for synced in (True, False, None):
            with pytest.raises(CommandRejected) as err:
                check_freshness(cmd, NOW, 0, kernel_synced=synced)
            assert err.value.reason == "not_yet_valid"


async def test_box_in_1970_plays_emergency_and_raises_floor(rig: Rig) -> None:
    rig.clock.set_wall(30.0)
    synced_at = NOW - 7200  # systemd-timesyncd's clock file: the last NTP sync before this boot
    async with running(rig.router(known_floor=synced_at)) as router:
        await router.on_command(msg(rig.token(id="e1", data={"class": "emergency", "level": 1, "text": "flood"})))
        await router.on_command(msg(rig.token(id="d1")))
        assert await router.prune() == 0  # never prune on a wrong clock
    assert [(r["state"], r.get("reason"), r.get("note")) for r in rig.uplink.receipts()] == [
        ("received", None, "clock_unsynchronised"), ("rejected", "clock_unsynchronised", None)]
    # the floor survives a restart: an emergency that expired before it is refused
    async with running(rig.router(known_floor=synced_at)) as router:
        await router.on_command(msg(rig.token(id="e0", iat=NOW - 7200, exp=NOW - 3600,
                                              data={"class": "emergency"})))
    assert rig.uplink.receipts()[-1]["reason"] == "expired"


async def test_corrupt_store_is_moved_aside(rig: Rig) -> None:
    state = rig.tmp / "state"
    state.mkdir()
    (state / "commands.db").write_bytes(b"this is not sqlite" * 100)
    async with running(rig.router()) as router:
        await router.on_command(msg(rig.token()))
    assert [r["state"] for r in rig.uplink.receipts()] == ["received"]
    assert list(state.glob("commands.db.corrupt-*"))


async def test_after_a_reset_older_commands_are_refused_until_they_all_expired(rig: Rig) -> None:
    state = rig.tmp / "state"
    state.mkdir()
    (state / "commands.db").write_bytes(b"this is not sqlite" * 100)
    async with running(rig.router()) as router:
        # captured before the reset and still valid: it may have been obeyed already
        await router.on_command(msg(rig.token(id="old", iat=NOW - 60, exp=NOW + 20 * 86400)))
        # cancelling is always safe
        await router.on_command(msg(rig.token(id="c1", kind="broadcast.cancel", iat=NOW - 60,
                                              data={"broadcast": "old"})))
        await router.on_command(msg(rig.token(id="new", iat=NOW)))
    events = [e for e in rig.uplink.sent if e.cls is MsgClass.EVENT]
    assert [e.kind for e in events] == ["replay_reset"]
    assert events[0].data["floor"] == NOW and "moved aside" in events[0].data["reason"]
    assert [(r["cmd"], r["state"], r.get("reason")) for r in rig.uplink.receipts()] == [
        ("old", "rejected", "replay_unknown"), ("c1", "received", None), ("new", "received", None)]
    # the floor survives a restart, and is reported only in the run that reset the store
    rig.uplink.sent.clear()
    async with running(rig.router()) as router:
        await router.on_command(msg(rig.token(id="old2", iat=NOW - 1, exp=NOW + 3600)))
    assert [(r["state"], r.get("reason")) for r in rig.uplink.receipts()] == [("rejected", "replay_unknown")]
    assert not [e for e in rig.uplink.sent if e.cls is MsgClass.EVENT]
    # once every command from before the reset has expired, the floor is gone
    rig.clock.set_wall(NOW + MAX_LIFETIME_S + 1)
    async with running(rig.router()) as router:
        await router.prune()
        assert router._store.reset_floor is None


def test_bad_trust_key_is_a_config_error(rig: Rig) -> None:
    (rig.tmp / "keys" / "county-2027.pub").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError) as err:
        load_trust_keys(rig.config())
    assert err.value.key == "trust.keys.county-2027" and "county-2027.pub" in str(err.value)
    with pytest.raises(ConfigError):
        rig.router()


# ------------------------------------------------------------------ end to end: real outbox, link, mosquitto
class TestThroughTheBroker:
    """county CLI -> mosquitto -> link -> router -> outbox -> link -> mosquitto -> county, all real."""

    @staticmethod
    @contextlib.asynccontextmanager
    async def box(tmp_path: Path, broker_url: str, pub: Path) -> AsyncIterator[tuple[CommandRouter, list[Command]]]:
        from agent.link import Link
        from agent.outbox import Outbox
        from tests.support import agent_config_dict

        (tmp_path / "state").mkdir(exist_ok=True)
        config = parse_config(agent_config_dict(tmp_path / "state", broker_url,
                                                trust={"keys": {"county-2026": str(pub)}}))
        outbox = Outbox(config.outbox_path, config.box.id, max_bytes=config.outbox.max_bytes,
                        telemetry_ttl_s=config.outbox.telemetry_ttl_s, commit_interval_s=0.01)
        receipts = Receipts(outbox, outbox.clock)
        router = CommandRouter(config, receipts, outbox.clock)
        calls: list[Command] = []

        async def play(cmd: Command) -> None:
            calls.append(cmd)
            await receipts.send(cmd.id, "scheduled")

        router.register("broadcast.play", play)
        link = Link(config, outbox, router)
        started = asyncio.Event()
        link_ready = asyncio.Event()
        tasks = [asyncio.create_task(outbox.run(lambda: None), name="test.outbox"),
                 asyncio.create_task(router.run(started.set), name="test.router"),
                 asyncio.create_task(link.run(link_ready.set), name="test.link")]
        try:
            await asyncio.wait_for(started.wait(), 10)
            from tests.support import wait_until

            await asyncio.to_thread(wait_until, lambda: link.state.value == "connected", 20)
            yield router, calls
        finally:
            for t in reversed(tasks):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    async def test_push_wait_through_the_real_agent_core(self, tmp_path: Path, broker: Any, collector: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
        from county.cli import main as county

        key, pub = new_keypair("county-2026", tmp_path / "keys")
        async with self.box(tmp_path, broker.url, pub) as (_router, calls):
            rc = await asyncio.to_thread(county, [
                "push", "--broker", broker.url, "--key", str(key), "--kid", "county-2026",
                "--to", "group:town-test", "--text", "明天上午9点停水", "--id", "e2e-1", "--wait", "3"])
        out = capsys.readouterr().out.splitlines()
        assert rc == 0, out
        assert out[1].split()[:2] == ["box-1", "scheduled"]
        assert [c.id for c in calls] == ["e2e-1"]
        states = [e["data"]["state"] for e in collector.envelopes() if e["kind"] == "cmd"]
        assert states == ["received", "scheduled"]

    async def test_retained_replay_and_misrouted_over_mqtt(self, tmp_path: Path, broker: Any,
                                                           collector: Any) -> None:
        from tests.support import wait_until

        key_path, pub = new_keypair("county-2026", tmp_path / "keys")
        from agent.keys import load_private_key

        key = load_private_key(key_path)
        import time as _time

        def token(cmd_id: str, to: list[str]) -> bytes:
            now = int(_time.time())
            return jws.sign({"v": 1, "id": cmd_id, "kind": "broadcast.play", "iat": now, "exp": now + 600,
                             "to": to, "data": {"class": "daily", "text": "x"}}, key, "county-2026").encode()

        box_topic = "vc/v1/box/box-1/cmd"
        collector.publish(box_topic, token("ret-1", ["box:box-1"]), retain=True)  # waits on the broker
        async with self.box(tmp_path, broker.url, pub) as (_router, calls):
            ok = token("ok-1", ["group:town-test"])
            collector.publish("vc/v1/group/town-test/cmd", ok)
            collector.publish("vc/v1/group/town-test/cmd", ok)  # replayed
            collector.publish(box_topic, token("mis-1", ["box:box-2"]))  # meant for another box

            def receipts() -> list[tuple[str, str, str | None]]:
                return [(e["data"]["cmd"], e["data"]["state"], e["data"].get("reason"))
                        for e in collector.envelopes() if e["kind"] == "cmd"]

            await asyncio.to_thread(wait_until, lambda: len(receipts()) >= 5, 20)
        collector.publish(box_topic, b"", retain=True)  # clear the retained message
        assert sorted(receipts()) == sorted([
            ("ret-1", "rejected", "retained"), ("ok-1", "received", None), ("ok-1", "scheduled", None),
            ("ok-1", "rejected", "replay"), ("mis-1", "rejected", "not_addressed")])
        assert [c.id for c in calls] == ["ok-1"]


async def test_a_reset_on_an_unset_clock_sets_the_floor_once_the_clock_is_plausible(rig: Rig) -> None:
    state = rig.tmp / "state"
    state.mkdir()
    (state / "commands.db").write_bytes(b"this is not sqlite" * 100)
    rig.clock.set_wall(86400.0)  # a Pi without RTC, 1970, NTP not answered yet
    async with running(rig.router()):
        pass
    (event,) = [e for e in rig.uplink.sent if e.cls is MsgClass.EVENT]
    assert event.kind == "replay_reset" and event.data["floor"] is None
    rig.clock.set_wall(NOW)  # NTP answered; a restart in between keeps the pending reset
    async with running(rig.router()) as router:
        await router.on_command(msg(rig.token(id="old", iat=NOW - 60, exp=NOW + 3600)))
        assert router._store.reset_floor == NOW
    assert [(r["cmd"], r["state"], r.get("reason")) for r in rig.uplink.receipts()] == [
        ("old", "rejected", "replay_unknown")]
