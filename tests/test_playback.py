"""The broadcast service and its playback chain with the twins (relay on gpiozero's MockFactory, the twin
player), a real SQLite state file and real espeak-ng. Uplink is a small recorder standing in for the outbox.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.broadcast.service import BroadcastService, make_services
from agent.broadcast.store import BroadcastStore
from agent.clock import SystemClock
from agent.config import Config, parse_config
from agent.context import AgentContext, Hardware
from agent.profile import load_profile
from agent.protocol.commands import Command
from agent.protocol.envelope import Envelope, MsgClass
from agent.receipts import Receipts
from sim.amp import TwinAmpRelay
from sim.audio import SilentTts, TwinPlayer, build_broadcast_hardware


class RecordingUplink:
    """Test double of the Uplink Protocol: keeps every message, durable at once."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.seq = 0

    async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
        self.seq += 1
        self.sent.append(data)
        return Envelope("b1", self.seq, ts_ms or 0, cls, kind, data)

    def send_nowait(self, cls: MsgClass, kind: str, data: dict[str, Any],
                    ts_ms: int | None = None) -> asyncio.Future[Envelope]:
        return asyncio.ensure_future(self.send(cls, kind, data, ts_ms))


@dataclass
class Registry:
    handlers: dict[str, Callable] = field(default_factory=dict)

    def register(self, kind: str, handler: Callable) -> None:
        self.handlers[kind] = handler


def wav(seconds: float, freq: int = 440) -> bytes:
    return subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "-t", "wav", "-", "synth",
                           str(seconds), "sine", str(freq)], check=True, capture_output=True).stdout


def audio(data: bytes, mime: str = "audio/wav", sha: str | None = None) -> dict[str, str]:
    return {"mime": mime, "sha256": sha or hashlib.sha256(data).hexdigest(), "b64": base64.b64encode(data).decode()}


class Rig:
    def __init__(self, state_dir: Path, *, speed: float = 4.0, tts: Any = None, player: Any = None,
                 **broadcast: Any) -> None:
        cfg = {"warmup_s": 0.05, "tail_s": 0.0, "off_delay_s": 0.1, "chime": "builtin", **broadcast}
        self.config: Config = parse_config({"box": {"id": "b1", "profile": "sim", "state_dir": str(state_dir)},
                                            "mqtt": {"url": "mqtt://127.0.0.1:1"}, "broadcast": cfg})
        self.relay = TwinAmpRelay(17)
        self.player = player or TwinPlayer(speed=speed, hang_slack_s=0.05)
        self.tts = tts or SilentTts()
        self.uplink = RecordingUplink()
        self.registry = Registry()
        clock = SystemClock()
        self.ctx = AgentContext(self.config, load_profile("sim"), self.uplink, Receipts(self.uplink, clock), clock,
                                self.registry, Hardware(relay=self.relay, player=self.player, tts=self.tts))
        (self.service,) = make_services(self.ctx)
        assert isinstance(self.service, BroadcastService)
        self.n = 0

    async def play(self, cmd_id: str, **data: Any) -> None:
        data.setdefault("class", "daily")
        data.setdefault("level", 3)
        await self.registry.handlers["broadcast.play"](Command(cmd_id, "broadcast.play", 0, 0, ("box:b1",), data, "k"))

    async def cancel(self, cmd_id: str, **data: Any) -> None:
        await self.registry.handlers["broadcast.cancel"](Command(cmd_id, "broadcast.cancel", 0, 0, ("box:b1",), data,
                                                                 "k"))

    def states(self, cmd: str | None = None) -> list[Any]:
        return [(r["cmd"], r["state"]) if cmd is None else r["state"] for r in self.uplink.sent
                if cmd is None or r["cmd"] == cmd]

    def receipt(self, cmd: str, state: str) -> dict[str, Any]:
        return next(r for r in self.uplink.sent if r["cmd"] == cmd and r["state"] == state)

    async def until(self, pred: Callable[[], Any], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; receipts: {self.states()}, player: {self.player.events()}")
            await asyncio.sleep(0.01)

    async def idle(self) -> None:
        """Wait until nothing plays and the relay went off after its off-delay."""
        await self.until(lambda: self.player.playing is None and not self.relay.is_on
                         and self.service.engine is not None and self.service.engine.playing is None)


@contextlib.asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Rig]:
    ready = asyncio.Event()
    task = asyncio.create_task(rig.service.run(ready.set), name="test.broadcast")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield rig
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not rig.relay.is_on  # off in every finally


DAILY = wav(4.0)  # 1 s at speed 4
SOS = wav(1.0, 880)


async def test_emergency_preempts_daily_histories_in_full(tmp_path: Path) -> None:
    async with running(Rig(tmp_path)) as rig:
        await rig.play("d1", audio=audio(DAILY), volume=95)  # capped to 80
        await rig.until(lambda: rig.player.playing == "d1.wav")
        await rig.play("e1", **{"class": "emergency"}, level=1, audio=audio(SOS), volume=10)
        await rig.until(lambda: rig.states("d1")[-1:] == ["finished"])
        await rig.idle()
    assert rig.relay.events() == ["off", "on", "off"]  # stays on through the preemption and the resume
    assert rig.player.events() == [
        ("play", "chime.wav", 80), ("end", "chime.wav", 80), ("play", "d1.wav", 80), ("stopped", "d1.wav", 80),
        ("play", "chime.wav", 100), ("end", "chime.wav", 100), ("play", "e1.wav", 100), ("end", "e1.wav", 100),
        ("play", "chime.wav", 80), ("end", "chime.wav", 80), ("play", "d1.wav", 80), ("end", "d1.wav", 80),
    ]
    assert rig.states() == [("d1", "started"), ("d1", "scheduled"), ("e1", "started"), ("e1", "finished"),
                            ("d1", "started"), ("d1", "finished")]
    assert rig.receipt("d1", "scheduled")["reason"] == "preempted"
    started, finished = rig.receipt("e1", "started"), rig.receipt("e1", "finished")
    assert started["volume"] == 100 and started["lead_s"] > 0 and not started["resumed"]
    assert finished["duration_s"] > 0 and finished["expected_s"] == pytest.approx(1.0)
    assert [r["resumed"] for r in rig.uplink.sent if r["cmd"] == "d1" and r["state"] == "started"] == [False, True]
    assert not list((tmp_path / "broadcast-audio").glob("d1.*"))  # media of finished items is deleted


async def test_player_crash_turns_the_relay_off_and_fails(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, chime="")) as rig:
        rig.player.fail_next("crash")
        await rig.play("d1", audio=audio(SOS))
        await rig.until(lambda: rig.states("d1")[-1:] == ["failed"])
        assert not rig.relay.is_on  # at once, not after the off-delay
    assert rig.receipt("d1", "failed")["reason"] == "player_exit_1"
    assert rig.relay.events() == ["off", "on", "off"]
    assert rig.player.events() == [("play", "d1.wav", 70), ("crash", "d1.wav", 70)]


async def test_hung_player_is_killed(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, chime="")) as rig:
        rig.player.fail_next("hang")
        await rig.play("d1", audio=audio(SOS))
        await rig.until(lambda: rig.states("d1")[-1:] == ["failed"])
    assert rig.receipt("d1", "failed")["reason"] == "hang"
    assert rig.player.events() == [("play", "d1.wav", 70), ("killed", "d1.wav", 70)]
    assert rig.relay.events() == ["off", "on", "off"]


async def test_drill_has_markers_before_and_after_and_no_emergency_volume(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, speed=20, max_volume=100, default_volume=100)) as rig:
        await rig.play("dr", **{"class": "drill"}, text="疏散演练", volume=100)
        await rig.until(lambda: rig.states("dr")[-1:] == ["finished"])
    assert [e for e in rig.player.events() if e[0] == "play"] == [
        ("play", "chime.wav", 99), ("play", "drill-marker.wav", 99), ("play", "dr.wav", 99),
        ("play", "drill-marker.wav", 99)]


async def test_cancel_stops_playing_at_once_and_drops_queued(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, speed=1, chime="")) as rig:
        await rig.play("d1", audio=audio(DAILY))
        await rig.play("d2", audio=audio(DAILY))
        await rig.until(lambda: rig.player.playing == "d1.wav")
        await rig.cancel("c1", broadcast="d1")
        await rig.until(lambda: "applied" in rig.states("c1"))
        assert rig.player.events() == [("play", "d1.wav", 70), ("stopped", "d1.wav", 70)]  # state, not time
        await rig.until(lambda: rig.player.playing == "d2.wav")
        await rig.cancel("c2", all=True)
        await rig.until(lambda: "applied" in rig.states("c2"))
        assert rig.player.playing is None and not rig.relay.is_on
        await rig.cancel("c3", broadcast="nope")
        await rig.until(lambda: rig.states("c3") == ["failed"])
    assert rig.states("d1") == ["started", "cancelled"] and rig.states("d2") == ["scheduled", "started", "cancelled"]
    assert rig.receipt("c2", "applied")["cancelled"] == ["d2"]
    assert rig.relay.events() == ["off", "on", "off", "on", "off"]


async def test_bad_audio_is_rejected_and_nothing_plays(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, max_audio_bytes=20_000)) as rig:
        await rig.play("h1", audio=audio(SOS, sha="ab" * 32))
        await rig.play("big", audio=audio(DAILY))  # 64 kB > 20 kB
        await rig.play("bad", level=9, text="x")
        await rig.until(lambda: len(rig.uplink.sent) == 3)
    assert [(r["cmd"], r["state"], r["reason"]) for r in rig.uplink.sent] == [
        ("h1", "rejected", "hash_mismatch"), ("big", "rejected", "audio_too_large"), ("bad", "rejected", "bad_data")]
    assert rig.relay.events() == ["off"] and rig.player.events() == []
    assert list((tmp_path / "broadcast-audio").iterdir()) == [tmp_path / "broadcast-audio" / "chime.wav"]


def quiet_around_now(tz: str = "Asia/Shanghai") -> list[str]:
    """Quiet hours from an hour ago to an hour from now, local time in `tz`."""
    now = datetime.now(ZoneInfo(tz))
    return [(now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")]


async def test_quiet_hours_hold_daily_but_not_emergency(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, quiet_hours=quiet_around_now(), chime="")) as rig:
        await rig.play("d1", text="通知")
        await rig.play("e1", **{"class": "emergency"}, audio=audio(SOS))
        await rig.until(lambda: rig.states("e1")[-1:] == ["finished"])
    assert rig.states("d1") == ["scheduled"] and rig.receipt("d1", "scheduled")["reason"] == "quiet_hours"
    assert [e for e in rig.player.events() if e[0] == "play"] == [("play", "e1.wav", 100)]


async def test_reboot_resumes_a_scheduled_item(tmp_path: Path) -> None:
    rig = Rig(tmp_path, chime="")
    async with running(rig):
        await rig.play("later", audio=audio(SOS), start=time.time() + 1.5)
        await rig.until(lambda: rig.states("later") == ["scheduled"])
    assert rig.player.events() == []
    again = Rig(tmp_path, chime="")  # a new process: new drivers, same state_dir
    async with running(again):
        await again.until(lambda: again.states("later")[-1:] == ["finished"])
    assert again.player.events() == [("play", "later.wav", 70), ("end", "later.wav", 70)]
    assert again.states("later") == ["started", "finished"]


async def test_shutdown_mid_play_switches_off(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, speed=1, chime="")) as rig:
        await rig.play("d1", audio=audio(DAILY))
        await rig.until(lambda: rig.player.playing == "d1.wav")
    assert rig.relay.events() == ["off", "on", "off"]


class CleanupHangsPlayer(TwinPlayer):
    """A player whose cleanup after a cancellation takes long (a child that will not die, a slow card)."""

    def __init__(self) -> None:
        super().__init__(speed=1)
        self.release = asyncio.Event()

    async def play(self, source: Any, mime: str, volume: int, cancel: asyncio.Event | None = None,
                   *, timeout_s: float = 900.0) -> Any:
        try:
            return await super().play(source, mime, volume, None, timeout_s=timeout_s)
        except asyncio.CancelledError:
            await self.release.wait()
            raise


async def test_relay_goes_off_before_any_cleanup_await(tmp_path: Path) -> None:
    # The supervisor's overrun exit, systemd's SIGKILL or the watchdog may end the process while the play
    # task or the store is still cleaning up: the relay must already be off by then.
    player = CleanupHangsPlayer()
    rig = Rig(tmp_path, chime="", player=player)
    ready = asyncio.Event()
    task = asyncio.create_task(rig.service.run(ready.set), name="test.broadcast")
    await asyncio.wait_for(ready.wait(), 10)
    await rig.play("d1", audio=audio(DAILY))
    await rig.until(lambda: rig.player.playing == "d1.wav" and rig.relay.is_on)
    task.cancel()
    await rig.until(lambda: not rig.relay.is_on)
    assert not task.done()  # the play task is still in its cleanup, and the relay is off anyway
    player.release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert rig.relay.events() == ["off", "on", "off"] and rig.relay._dev.closed


async def test_slow_speech_does_not_hold_up_a_cancel_or_an_emergency(tmp_path: Path) -> None:
    tts = SilentTts(delay_s=3600)  # never finishes within the test
    async with running(Rig(tmp_path, chime="", tts=tts)) as rig:
        await rig.play("d1", text="今天下午三点在村委会开会")
        await rig.play("d2", text="明天停水")
        await rig.until(lambda: tts.started == 1)
        await rig.cancel("c1", broadcast="d1")  # still being spoken: cancelled, not unknown_broadcast
        await rig.play("e1", **{"class": "emergency"}, level=1, audio=audio(SOS))
        await rig.until(lambda: rig.states("e1")[-1:] == ["finished"] and "applied" in rig.states("c1"))
        assert tts.started == 2  # d2's turn came once d1 was cancelled
        await rig.cancel("c2", all=True)
        await rig.until(lambda: "applied" in rig.states("c2"))
    assert rig.states("d1") == ["cancelled"] and rig.receipt("d1", "cancelled")["by"] == "c1"
    assert rig.receipt("c1", "applied")["cancelled"] == ["d1"]
    assert rig.states("d2") == ["cancelled"] and rig.receipt("c2", "applied")["cancelled"] == ["d2"]
    assert [e for e in rig.player.events() if e[0] == "play"] == [("play", "e1.wav", 100)]
    assert sorted(p.name for p in (tmp_path / "broadcast-audio").iterdir()) == []


async def test_emergency_text_is_spoken_by_its_own_worker_and_played(tmp_path: Path) -> None:
    async with running(Rig(tmp_path, chime="")) as rig:
        await rig.play("e1", **{"class": "emergency"}, level=1, text="山洪预警")
        await rig.until(lambda: rig.states("e1")[-1:] == ["finished"])
    assert rig.states("e1") == ["started", "finished"]


async def test_a_full_disk_does_not_stop_broadcasts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    opened: list[BroadcastStore] = []
    real_open = BroadcastStore.open.__func__  # type: ignore[attr-defined]

    async def open_on_a_full_disk(cls: type[BroadcastStore], path: Path) -> BroadcastStore:
        store = await real_open(cls, path)
        (pages,) = await (await store._db.execute("PRAGMA page_count")).fetchone()
        await store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL on the next growth
        opened.append(store)
        return store

    saved_again = asyncio.Event()

    class SavedAgain(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().endswith("saving works again"):
                saved_again.set()

    # the receipt task may send "finished" before the loop saves again: wait for the save itself
    watch = SavedAgain()
    logging.getLogger("agent.broadcast.store").addHandler(watch)
    monkeypatch.setattr(BroadcastStore, "open", classmethod(open_on_a_full_disk))
    try:
        async with running(Rig(tmp_path, chime="")) as rig:
            await rig.play("d1", audio=audio(SOS), text="停" * 2000)  # 6 kB: needs pages the disk has not
            await rig.until(lambda: rig.states("d1")[-1:] == ["finished"])
            await asyncio.wait_for(saved_again.wait(), 10)
            # the write was refused for real (and saved once d1 was gone), and the service went on
            assert [r.message.split(": ")[-1] for r in caplog.records if r.name == "agent.broadcast.store"] == [
                "cannot save (database or disk is full); the schedule is kept in memory and saved again when the "
                "disk allows", "saving works again"]
            await rig.play("d2", audio=audio(SOS))
            await rig.until(lambda: rig.states("d2")[-1:] == ["finished"])
    finally:
        logging.getLogger("agent.broadcast.store").removeHandler(watch)


def test_builder_gives_twins_for_the_sim_profile() -> None:
    hw = build_broadcast_hardware(load_profile("sim"), sim=True)
    assert isinstance(hw.relay, TwinAmpRelay) and isinstance(hw.player, TwinPlayer)
    assert hw.relay.pin == 17 and not hw.relay.is_on
    hw.relay.close()
    slack = build_broadcast_hardware(load_profile("sim"), sim=True, hang_slack_s=2.5)
    assert slack.player.hang_slack_s == 2.5  # [broadcast] hang_slack_s reaches the twin player too
    slack.relay.close()


def test_real_builder_passes_hang_slack_to_the_player() -> None:
    from gpiozero.pins.mock import MockFactory

    hw = build_broadcast_hardware(load_profile("pi4-relayhat"), sim=False, hang_slack_s=2.5,
                                  pin_factory=MockFactory())
    assert hw.player.hang_slack_s == 2.5
    hw.relay.close()
