"""A stop (the supervisor cancels a service's task on SIGTERM) is never lost, wherever it lands.

Python 3.11's `asyncio.wait_for` returns the inner outcome and drops a cancellation that lands in the loop
step in which the awaited thing completes (CPython gh-86296); the service then goes on as if never stopped.
Every test here makes that race certain by construction, never by repetition or sleeps: the cancellation is
delivered from inside the awaited thing, in the very step in which it completes (or as the next callback,
ahead of the waiter's wake-up). A service that lost it never ends (it naps for BIG_S), so the guard below is
only a failure guard, never a timing the pass depends on.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import drivers.audio.player as player_mod
from agent.broadcast.service import BroadcastService, _Ended
from agent.outbox import Outbox
from agent.protocol.envelope import MsgClass
from county.ingest import Ingest, IngestConfig
from county.server.events import EventHub
from county.store import Database
from drivers.aio import wait_within
from drivers.audio.base import MAX_VOLUME
from drivers.audio.media import chime_wav
from drivers.audio.player import AlsaPlayer
from drivers.audio.tts import EspeakTts
from drivers.wristband.setup import SetupScript, SetupSession
from tests.county_ingest_proc import Publisher, envelope
from tests.support import CANCEL_ORDERINGS, Mosquitto, deliver_cancel
from tests.test_playback import DAILY, Rig, audio

pytestmark = pytest.mark.timeout(60)

GUARD_S = 20.0
BIG_S = 600.0
ORDERINGS = CANCEL_ORDERINGS
deliver = deliver_cancel


async def ended_by_cancel(task: asyncio.Task[Any]) -> None:
    done, _ = await asyncio.wait({task}, timeout=GUARD_S)
    assert task in done, "the cancellation was lost: the task went on"
    assert task.cancelled(), f"the task ended otherwise: {task.exception() if not task.cancelled() else None!r}"


class Armed:
    """One cancellation, fired from inside an awaited thing the moment it completes."""

    def __init__(self, ordering: str) -> None:
        self.ordering = ordering
        self.task: asyncio.Task[Any] | None = None
        self.fired = 0

    def fire(self) -> None:
        if self.task is not None and not self.fired:
            self.fired += 1
            deliver(self.ordering, self.task)


# -- the helper itself -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_wait_within_never_drops_a_cancel_landing_as_the_inner_completes(ordering: str) -> None:
    armed = Armed(ordering)

    async def inner() -> str:
        await asyncio.sleep(0)
        armed.fire()
        return "done"

    armed.task = asyncio.create_task(wait_within(inner(), BIG_S))
    await ended_by_cancel(armed.task)
    assert armed.fired == 1


async def test_wait_within_times_out_cancels_the_inner_and_passes_results() -> None:
    never = asyncio.Event()
    inner = asyncio.ensure_future(never.wait())
    with pytest.raises(TimeoutError):
        await wait_within(inner, 0.01)
    assert inner.cancelled()
    assert await wait_within(asyncio.sleep(0, "x"), BIG_S) == "x"
    assert await wait_within(asyncio.sleep(0, "y"), None) == "y"

    async def boom() -> None:
        raise ValueError("inner")

    with pytest.raises(ValueError, match="inner"):
        await wait_within(boom(), BIG_S)


# -- broadcast: the service's loop, with a play on -----------------------------------------------------------
class CancelOnGet(asyncio.Queue):  # type: ignore[type-arg]
    """The broadcast inbox; the stop lands as the message that a play ended is taken from it."""

    def __init__(self, armed: Armed, when: Callable[[Any], bool]) -> None:
        super().__init__()
        self.armed, self.when = armed, when

    async def get(self) -> Any:
        msg = await super().get()
        if self.when(msg):
            self.armed.fire()
        return msg


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_a_stop_landing_as_a_play_ends_ends_the_service_with_the_relay_off(
        tmp_path: Path, ordering: str) -> None:
    # off_delay_s: after a play the amplifier stays on that long for a follower; a service that lost the stop
    # sits in that nap with the relay on until systemd's SIGKILL (and a Pi GPIO keeps its level after that)
    rig = Rig(tmp_path, speed=8, chime="", off_delay_s=BIG_S)
    armed = Armed(ordering)
    service = rig.service
    assert isinstance(service, BroadcastService)
    service._inbox = CancelOnGet(armed, lambda m: isinstance(m, _Ended))
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(ready.set), name="test.broadcast")
    armed.task = task
    try:
        await wait_within(ready.wait(), GUARD_S)
        await rig.play("d1", audio=audio(DAILY))
        await ended_by_cancel(task)
        assert armed.fired == 1
        assert not rig.relay.is_on
        assert rig.relay.events() == ["off", "on", "off"]
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- the outbox: its commit loop waits for an alarm or the commit interval --------------------------------
class CancelOnWait(asyncio.Event):
    def __init__(self, armed: Armed) -> None:
        super().__init__()
        self.armed = armed
        self.entered = asyncio.Event()

    async def wait(self) -> Any:
        self.entered.set()
        got = await super().wait()
        self.armed.fire()
        return got


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_a_stop_landing_as_an_alarm_wakes_the_outbox_ends_it(tmp_path: Path, ordering: str) -> None:
    outbox = Outbox(tmp_path / "outbox.db", "b1", max_bytes=10_000_000, telemetry_ttl_s=BIG_S,
                    commit_interval_s=BIG_S)
    armed = Armed(ordering)
    outbox._urgent = urgent = CancelOnWait(armed)
    ready = asyncio.Event()
    task = asyncio.create_task(outbox.run(ready.set), name="outbox.run")
    armed.task = task
    try:
        await wait_within(ready.wait(), GUARD_S)
        outbox.send_nowait(MsgClass.EVENT, "plain", {"n": 1})  # wakes the loop into its commit-interval wait
        await wait_within(urgent.entered.wait(), GUARD_S)
        sos = outbox.send_nowait(MsgClass.ALARM, "sos", {"n": 2})  # an alarm ends that wait at once
        await ended_by_cancel(task)
        assert armed.fired == 1
        assert sos.done() and not sos.cancelled()  # stored in the final flush (or refused), never left waiting
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- child processes: player helpers (ffprobe, amixer) and text to speech -------------------------------------
@pytest.fixture
def cancel_on_communicate(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Armed]:
    """Each child's communicate() completes for real (the child has exited), and the stop lands right there."""

    def arm(ordering: str) -> Armed:
        armed = Armed(ordering)
        real = asyncio.subprocess.Process.communicate

        async def communicate_then_stop(self: asyncio.subprocess.Process, input: bytes | None = None) -> Any:
            out = await real(self, input)
            armed.fire()
            return out

        monkeypatch.setattr(asyncio.subprocess.Process, "communicate", communicate_then_stop)
        return armed

    return arm


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_a_stop_landing_as_ffprobe_answers_ends_the_player(
        tmp_path: Path, cancel_on_communicate: Callable[[str], Armed], ordering: str) -> None:
    clip = tmp_path / "a.mp3"
    clip.write_bytes(b"not really mp3")
    ffprobe = script(tmp_path / "ffprobe", "echo 12.5")
    player = AlsaPlayer(ffprobe=str(ffprobe))
    assert await player.duration(clip, "audio/mpeg") == 12.5  # the real answer, without a stop
    armed = cancel_on_communicate(ordering)
    armed.task = asyncio.create_task(player.duration(clip, "audio/mpeg"))
    await ended_by_cancel(armed.task)
    assert armed.fired == 1


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("step", ["voices", "synth"])
async def test_a_stop_landing_as_espeak_ends_ends_the_tts(
        tmp_path: Path, cancel_on_communicate: Callable[[str], Armed], ordering: str, step: str) -> None:
    tts = EspeakTts("cmn")  # the real espeak-ng
    if step == "synth":
        await tts.synth("一", tmp_path / "warm.wav")  # the voice is checked once: the stop lands in the synth
    armed = cancel_on_communicate(ordering)
    armed.task = asyncio.create_task(tts.synth("测试", tmp_path / "out.wav"))
    await ended_by_cancel(armed.task)
    assert armed.fired == 1
    assert not (tmp_path / "out.wav").exists()  # a stopped synth hands nothing on
    assert not (tmp_path / "out.wav.part").exists()  # and leaves no half-written file


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("step", ["voices", "synth"])
async def test_a_stop_while_espeak_hangs_kills_the_child_and_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    # a hung espeak-ng (the one fake here: a real one cannot be made to hang on demand)
    hung = "exec sleep 600" if step == "voices" else 'case "$*" in *--voices*) echo "P L N F"; ' \
        'echo "5 cmn M cmn sit/cmn";; *) exec sleep 600;; esac'
    binary = script(tmp_path / "espeak-ng", hung)
    started: list[asyncio.subprocess.Process] = []
    running = asyncio.Event()
    real = asyncio.subprocess.Process.communicate

    async def communicate(self: asyncio.subprocess.Process, input: bytes | None = None) -> Any:
        started.append(self)
        if step == "voices" or len(started) == 2:
            running.set()
        return await real(self, input)

    monkeypatch.setattr(asyncio.subprocess.Process, "communicate", communicate)
    task = asyncio.create_task(EspeakTts("cmn", binary=str(binary)).synth("x", tmp_path / "out.wav"))
    try:
        await wait_within(running.wait(), GUARD_S)
        task.cancel()
        await ended_by_cancel(task)
        child = started[-1]
        assert child.returncode is not None, "the child was left running"
        with pytest.raises(ProcessLookupError):
            os.kill(child.pid, 0)  # killed and reaped
    finally:
        for p in started:
            if p.returncode is None:
                p.kill()
                await p.wait()


# -- county ingest: the batcher waits for more messages after the first of a batch ----------------------------
class BatchingMore(asyncio.Event):
    """Ingest's "more has come" event: the stop (Ingest.close cancels the task) lands as the second message
    joins the batch the batcher is filling (waiting on this event within its window)."""

    def __init__(self, armed: Armed) -> None:
        super().__init__()
        self.armed, self.sets = armed, 0
        self.batching = asyncio.Event()

    async def wait(self) -> Any:
        if self.sets >= 1:
            self.batching.set()  # the first message is in the batch: the batcher waits for more
        return await super().wait()

    def set(self) -> None:
        self.sets += 1
        super().set()
        if self.sets == 2:
            self.armed.fire()


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_a_stop_landing_as_a_message_joins_an_ingest_batch_ends_ingest(
        tmp_path: Path, broker: Mosquitto, ordering: str) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'county.db'}")
    ingest = Ingest(IngestConfig(urls=[broker.url], client_id="county-test-1", batch_ms=BIG_S * 1000), db,
                    EventHub())
    armed = Armed(ordering)
    ingest._more = more = BatchingMore(armed)
    pub = Publisher(broker.url)
    try:
        await ingest.start()
        await ingest.wait_subscribed()
        assert ingest._task is not None
        armed.task = ingest._task
        # telemetry: an alarm goes alone at once, only the rest waits in the window for more
        await asyncio.to_thread(pub.publish, [envelope("b1", 1, "telemetry", "position")])
        await wait_within(more.batching.wait(), GUARD_S)
        await asyncio.to_thread(pub.publish, [envelope("b1", 2, "telemetry", "position")])
        await ended_by_cancel(ingest._task)
        assert armed.fired == 1
    finally:
        pub.close()
        if ingest._task is not None and not ingest._task.done():
            ingest._task.cancel()
        await wait_within(ingest.close(), GUARD_S)
        await db.close()


# -- the rule, for code still to come ---------------------------------------------------------------------------
def test_no_asyncio_wait_for_in_production_code() -> None:
    """docs/reliability.md: no asyncio.wait_for in agent/, drivers/ or county/ (use drivers.aio.wait_within)."""
    repo = Path(__file__).resolve().parent.parent
    found = []
    for path in sorted(p for top in ("agent", "drivers", "county") for p in (repo / top).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for" and \
                    isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                found.append(f"{path.relative_to(repo)}:{node.lineno}")
            elif isinstance(node, ast.ImportFrom) and node.module == "asyncio" and \
                    any(a.name == "wait_for" for a in node.names):
                found.append(f"{path.relative_to(repo)}:{node.lineno}")
    assert not found, found


# -- the player: a stop (task cancelled) landing as the killed children are reaped --------------------------
@pytest.mark.parametrize("ordering", [*ORDERINGS, "after shield"])
async def test_a_stop_landing_as_the_player_children_die_ends_the_play(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ordering: str) -> None:
    # The cancel event stops the play (SIGTERM to the group, a grace for it to die); the task's own cancel (the
    # service stopping) lands as the children are reaped. "after shield": two callbacks later, once the
    # grace wait's inner future is complete too (where 3.11's wait_for(shield(...)) returned and dropped it).
    clip = tmp_path / "clip.wav"
    clip.write_bytes(chime_wav())
    aplay = script(tmp_path / "aplay", "exec sleep 600")  # a stuck ALSA write; no sound card here
    player = AlsaPlayer(aplay=str(aplay))
    stop = asyncio.Event()
    spawned = asyncio.Event()
    procs: list[asyncio.subprocess.Process] = []
    task: asyncio.Task[Any] | None = None
    real = player_mod._wait_all

    async def wait_all_then_stop(ps: list[asyncio.subprocess.Process]) -> None:
        procs.extend(ps)
        spawned.set()
        await real(ps)
        assert task is not None
        if ordering == "after shield":
            loop, cancel = asyncio.get_running_loop(), task.cancel
            loop.call_soon(lambda: loop.call_soon(cancel))
        else:
            deliver(ordering, task)

    monkeypatch.setattr(player_mod, "_wait_all", wait_all_then_stop)
    task = asyncio.create_task(player.play(clip, "audio/wav", MAX_VOLUME, stop))
    try:
        await wait_within(spawned.wait(), GUARD_S)
        stop.set()
        await ended_by_cancel(task)
        assert procs and all(p.returncode is not None for p in procs), "a child outlived play()"
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


# -- the wristband gateway's setup script: a reply and the stop in the same step ----------------------------
@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_a_stop_landing_as_the_gateway_replies_ends_the_setup(ordering: str) -> None:
    # the gateway's reply is fed by the reader as it arrives; the stop (the reader's task cancelled) lands with
    # it. A setup that lost it went on writing settings to a gateway whose service is stopping.
    task: asyncio.Task[Any] | None = None

    def reply_then_stop() -> None:
        session.feed(b"OK\r\n")
        assert task is not None
        deliver(ordering, task)

    async def write(data: bytes) -> None:
        asyncio.get_running_loop().call_soon(reply_then_stop)

    session = SetupSession(SetupScript((("AT", b"AT\r\n"), ("ATE0", b"ATE0\r\n")), "OK", BIG_S), write)
    task = asyncio.create_task(session.run())
    await ended_by_cancel(task)
    assert session.written == [b"AT\r\n"]
