"""The broadcast service: command handlers, the engine loop, and the playback chain.

    relay on -> warm-up -> chime -> [drill marker] -> content -> [drill marker] -> tail
             -> relay off after off_delay_s unless another item follows

The engine (engine.py) decides; this module only carries out its effects and feeds it events. One
TaskGroup owns the sub-tasks: `broadcast.receipts` (sends receipts in order, so playback never waits
for an fsync) and at most one `broadcast.play` at a time. The relay is off at start and in `finally`;
a failed play switches it off at once, a finished one after `off_delay_s` unless another item starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.broadcast.engine import SYNC_EPOCH, Effect, Engine, Notify, Rules, Start, Stop
from agent.broadcast.items import BadBroadcast, BroadcastError, Item, Klass, PlayRequest, parse_cancel, parse_play
from agent.broadcast.live import LIVE_MIME, fallback_mark, parse_live
from agent.broadcast.live_player import LivePlayer, sink_factory_for
from agent.broadcast.settings import BroadcastConfig
from agent.broadcast.store import BroadcastStore
from agent.context import AgentContext
from agent.fsutil import write_atomic
from agent.protocol.commands import Command
from agent.protocol.text import escape
from agent.service import Service
from drivers.aio import wait_within
from drivers.amp.relay import AmpError, AmpRelay
from drivers.audio.base import AudioPlayer, MediaError, PlaybackError, Tts, TtsError
from drivers.audio.media import chime_wav, decode_audio

log = logging.getLogger("agent.broadcast")

MAX_NAP_S = 30.0  # re-check at least this often: the wall clock may jump (NTP sync, RTC-less boot)
STOP_BUDGET_S = 1.0  # a stopped play must be gone within this (cancel within 1 s)
AUDIO_DIR = "broadcast-audio"
CHIME_FILE = "chime.wav"
MARKER_FILE = "drill-marker.wav"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}\Z")  # \Z and .fullmatch: "$" lets "id\n" through
FLOOR_STEP_S = 86400.0  # how far past the wall clock one command's signed time may move engine.time_floor


def media_stem(item_id: str) -> str:
    """A file name stem for an item's audio: the id itself when it is a safe name, else a hash of it."""
    return item_id if _SAFE_NAME.fullmatch(item_id) and not item_id.startswith(".") else \
        hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# What the engine loop is told (`_inbox`): an item to add, a cancel, a play that ended.
@dataclass(frozen=True, slots=True)
class _Add:
    item: Item


@dataclass(frozen=True, slots=True)
class _Cancel:
    cmd_id: str
    target: str | None  # None: cancel all


@dataclass(frozen=True, slots=True)
class _Ended:
    token: int
    ok: bool
    reason: str | None
    extra: dict[str, Any]


_Message = _Add | _Cancel | _Ended


@dataclass
class _Play:
    token: int
    item_id: str
    cancel: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class _Job:
    """A play whose text is waiting to be spoken (`broadcast.prepare`)."""

    cmd_id: str
    req: PlayRequest
    received: float
    cancelled: bool = False
    task: asyncio.Task[TtsError | None] | None = None


class BroadcastService:
    name = "broadcast"

    def __init__(self, ctx: AgentContext, relay: AmpRelay, player: AudioPlayer, tts: Tts) -> None:
        self._ctx = ctx
        self._cfg: BroadcastConfig = ctx.config.broadcast
        self._relay = relay
        self._player = player
        self._tts = tts
        self._dir = ctx.config.box.state_dir / AUDIO_DIR
        self._inbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._receipts: asyncio.Queue[Notify] = asyncio.Queue()
        self._engine: Engine | None = None
        self._play: _Play | None = None
        self._off_at: float | None = None  # monotonic time to switch the relay off, when idle
        self._chime: Path | None = None
        self._pending_media: set[str] = set()  # written by a handler, not yet handed to the engine
        self._time_floor = 0.0  # newest signed county time (command iat) seen this run; see engine.synced
        self._preparing: dict[str, _Job] = {}  # plays waiting for text to speech, by id
        self._urgent: asyncio.Queue[_Job] = asyncio.Queue()  # emergencies
        self._routine: asyncio.Queue[_Job] = asyncio.Queue()  # daily, drill
        self.live = LivePlayer(ctx.config, sink_factory_for(player), silence_s=self._cfg.live_silence_s,
                               jitter_min_s=self._cfg.live_jitter_min_s,
                               jitter_max_s=self._cfg.live_jitter_max_s,
                               listener=ctx.listener)  # live sessions (live_player.py)

    @property
    def engine(self) -> Engine | None:
        return self._engine

    # -- command handlers (called by the command router, possibly before run() starts) ---------------
    def _saw_signed_time(self, cmd: Command) -> None:
        """A verified command's `iat` is county time the box clock must have reached (engine.time_floor).

        Bounded: it moves the floor at most FLOOR_STEP_S past the wall clock (past SYNC_EPOCH while the clock
        reads 1970), so one token signed far ahead (2099) holds timed items back for a day at most, never
        for good. A clock that is behind is still found out: any floor ahead of it by more than the skew."""
        base = max(self._ctx.clock.time(), SYNC_EPOCH)
        signed = min(float(cmd.iat), base + FLOOR_STEP_S)
        if signed > self._time_floor:
            self._time_floor = signed

    async def on_play(self, cmd: Command) -> None:
        """Validate and store inline audio here (fast); text waits for `broadcast.prepare` (TTS is slow).

        The link hands commands over one at a time, so nothing slow may run in a handler: a cancel or an
        emergency must never wait behind a 30 s synthesis.
        """
        self._saw_signed_time(cmd)
        received = self._ctx.clock.time()
        try:
            req = parse_play(cmd.data, default_tz=self._cfg.timezone, max_text_chars=self._cfg.max_text_chars)
            if req.audio is None:
                job = _Job(cmd.id, req, received)
                self._preparing[cmd.id] = job
                (self._urgent if req.cls is Klass.EMERGENCY else self._routine).put_nowait(job)
                return
            media, mime = await self._store_audio(cmd.id, req)
        except (BadBroadcast, MediaError) as exc:
            log.warning("broadcast %s rejected: %s", cmd.id, exc.reason)
            await self._ctx.receipts.send(cmd.id, "rejected", reason=exc.reason, detail=exc.detail)
            return
        self._add(cmd.id, req, media, mime, received, fallback_mark(cmd.data))

    def _add(self, cmd_id: str, req: PlayRequest, media: str, mime: str, received: float,
             extra: dict[str, Any] | None = None) -> None:
        self._pending_media.add(media)
        item = Item(cmd_id, req.cls, req.level, req.title, req.text, media, mime, req.volume, req.start,
                    req.end, req.repeat, 0, received, extra=extra or {})
        self._inbox.put_nowait(_Add(item))

    async def on_live(self, cmd: Command) -> None:
        """`broadcast.live`: a live session becomes an engine item (priority, preemption, quiet hours as any
        broadcast); its window to start is max_s from arrival. Audio: live_player.py."""
        self._saw_signed_time(cmd)
        received = self._ctx.clock.time()
        try:
            spec = parse_live(cmd.data, max_s_limit=self._cfg.max_play_s)
        except BadBroadcast as exc:
            log.warning("broadcast %s rejected: %s", cmd.id, exc.reason)
            await self._ctx.receipts.send(cmd.id, "rejected", reason=exc.reason, detail=exc.detail)
            return
        item = Item(cmd.id, spec.cls, spec.level, spec.title, "", None, LIVE_MIME, spec.volume, None,
                    received + spec.max_s, None, 0, received, extra=spec.to_json())
        self._inbox.put_nowait(_Add(item))

    async def on_cancel(self, cmd: Command) -> None:
        self._saw_signed_time(cmd)
        try:
            target = parse_cancel(cmd.data)
        except BadBroadcast as exc:
            await self._ctx.receipts.send(cmd.id, "rejected", reason=exc.reason, detail=exc.detail)
            return
        self._inbox.put_nowait(_Cancel(cmd.id, target))

    async def _store_audio(self, item_id: str, req: PlayRequest) -> tuple[str, str]:
        """Check and store inline audio: nothing is scheduled that cannot be played."""
        assert req.audio is not None
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        a = req.audio
        media = await asyncio.to_thread(decode_audio, a["mime"], a["sha256"], a["b64"], self._cfg.max_audio_bytes)
        name = f"{media_stem(item_id)}.{media.ext}"
        await asyncio.to_thread(write_atomic, self._dir / name, media.data)
        return name, media.mime

    async def _prepare_loop(self) -> None:
        """`broadcast.prepare`: speak queued texts; emergencies have their own worker so they never wait."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._prepare_worker(self._urgent), name="broadcast.prepare.emergency")
            tg.create_task(self._prepare_worker(self._routine), name="broadcast.prepare.routine")

    async def _prepare_worker(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            job = await queue.get()
            if job.cancelled:
                continue
            name = f"{media_stem(job.cmd_id)}.wav"
            async with asyncio.TaskGroup() as tg:  # a cancel ends the synthesis (job.task.cancel())
                job.task = tg.create_task(self._synth(job.req.text, self._dir / name), name="broadcast.tts")
            failure = None if job.task.cancelled() else job.task.result()
            job.task = None
            if self._preparing.pop(job.cmd_id, None) is None or job.cancelled:
                await asyncio.to_thread((self._dir / name).unlink, missing_ok=True)
            elif failure is not None:
                log.warning("broadcast %s: text to speech failed: %s", job.cmd_id, escape(failure))
                self._receipts.put_nowait(Notify(job.cmd_id, "failed", "tts_failed"))
            else:
                self._add(job.cmd_id, job.req, name, "audio/wav", job.received)

    async def _synth(self, text: str, out: Path) -> TtsError | None:
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        try:
            await self._tts.synth(text, out)
        except TtsError as exc:
            return exc
        return None

    def _cancel_preparing(self, cmd_id: str, target: str | None) -> list[str]:
        """Drop jobs still waiting for speech that `target` names (None = all); their ids."""
        ids = list(self._preparing) if target is None else [target] if target in self._preparing else []
        for item_id in ids:
            job = self._preparing.pop(item_id)
            job.cancelled = True
            if job.task is not None:
                job.task.cancel()
            self._receipts.put_nowait(Notify(item_id, "cancelled", extra={"by": cmd_id}))
        return ids

    # -- the service ---------------------------------------------------------------------------------
    async def run(self, ready: Callable[[], None]) -> None:
        self._relay.off()
        try:
            await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
            store = await BroadcastStore.open(self._ctx.config.box.state_dir / self._cfg.db_file)
            try:
                items = await store.load()
                self._engine = Engine(Rules.from_config(self._cfg), items)
                keep = {i.media for i in items if i.media} | self._pending_media
                await asyncio.to_thread(self._sweep_media, keep)
                self._chime = await self._prepare_chime()
                if items:
                    log.info("broadcast schedule resumed: %d item(s)", len(items))
                async with asyncio.TaskGroup() as tg:
                    try:
                        tg.create_task(self._send_receipts(), name="broadcast.receipts")
                        tg.create_task(self._prepare_loop(), name="broadcast.prepare")
                        ready()
                        await self._loop(tg, store)
                    except BaseException:
                        # Off FIRST, synchronously, before any await: the TaskGroup still waits for the play
                        # task and the store still closes after this, and the supervisor's overrun exit,
                        # systemd's SIGKILL or the watchdog's SIGABRT may end the process before they finish.
                        # A Pi GPIO keeps its last level after the process dies.
                        self._relay_off_now()
                        raise
            finally:
                self._relay_off_now()
                await self.live.close()
                await store.close()
        finally:
            self._relay_off_now()
            try:
                self._relay.close()
            except AmpError as exc:
                log.error("broadcast: closing the amplifier relay: %s", exc)

    def _relay_off_now(self) -> None:
        """Switch the amplifier off on an exit path; never raises (the exit path must go on)."""
        try:
            self._relay.off()
        except AmpError as exc:
            log.error("broadcast: cannot switch the amplifier relay off: %s", exc)

    async def _loop(self, tg: asyncio.TaskGroup, store: BroadcastStore) -> None:
        engine = self._engine
        assert engine is not None
        clock = self._ctx.clock
        while True:
            self._update_floor(engine)
            await self._apply(engine.step(clock.time(), clock.monotonic()), tg)
            await store.save(engine.items, self._forget(engine.take_dirty()))
            mono = clock.monotonic()
            if self._off_at is not None and mono >= self._off_at and self._play is None:
                self._relay.off()
                self._off_at = None
            nap = min(MAX_NAP_S, engine.next_wake(clock.time(), mono) or MAX_NAP_S)
            if self._off_at is not None:
                nap = min(nap, max(0.0, self._off_at - mono))
            try:
                msg = await wait_within(self._inbox.get(), nap)  # never wait_for: it can lose the stop
            except TimeoutError:
                continue
            while True:
                await self._apply(self._handle(engine, msg), tg)
                try:
                    msg = self._inbox.get_nowait()
                except asyncio.QueueEmpty:
                    break

    def _update_floor(self, engine: Engine) -> None:
        if self._time_floor > engine.time_floor:
            engine.time_floor = self._time_floor
            now = self._ctx.clock.time()
            if not engine.synced(now) and now >= SYNC_EPOCH:
                log.warning("broadcast: the wall clock is %.0f s behind signed county time; timed items wait "
                            "until it is right (emergencies still play)", engine.time_floor - now)

    def _handle(self, engine: Engine, msg: _Message) -> list[Effect]:
        clock = self._ctx.clock
        self._update_floor(engine)
        match msg:
            case _Add(item=item):
                self._pending_media.discard(item.media or "")
                return engine.add(item, clock.time(), clock.monotonic())
            case _Cancel(cmd_id=cmd_id, target=target):
                dropped = self._cancel_preparing(cmd_id, target)
                if dropped and target is not None:
                    return [Notify(cmd_id, "applied", extra={"cancelled": dropped})]
                effects = engine.cancel(cmd_id, target)
                if dropped:  # cancel all: one "applied" naming both the prepared and the scheduled items
                    effects = [Notify(e.cmd, e.state, e.reason, {"cancelled": dropped + e.extra["cancelled"]})
                               if isinstance(e, Notify) and e.cmd == cmd_id and e.state == "applied" else e
                               for e in effects]
                return effects
            case _Ended(token=token, ok=ok, reason=reason, extra=extra):
                if self._play is not None and self._play.token == token:
                    self._play = None
                    self._off_at = clock.monotonic() + (self._cfg.off_delay_s if ok else 0.0)
                return engine.ended(token, ok, reason, extra)
        raise BroadcastError(f"unknown inbox message {type(msg).__name__}")  # a bug, not an input

    async def _apply(self, effects: list[Effect], tg: asyncio.TaskGroup) -> None:
        for e in effects:
            if isinstance(e, Notify):
                self._receipts.put_nowait(e)
            elif isinstance(e, Stop):
                await self._stop(e)
            elif isinstance(e, Start):
                await self._stop_any()  # never two players on one device
                self._off_at = None
                cancel = asyncio.Event()
                task = tg.create_task(self._run_play(e, cancel), name="broadcast.play")
                self._play = _Play(e.token, e.item.id, cancel, task)

    async def _stop(self, stop: Stop) -> None:
        play = self._play
        if play is None or play.token != stop.token:
            return
        log.info("broadcast %s stopped: %s", stop.item_id, stop.reason)
        await self._stop_any()
        if stop.reason != "preempted":  # a preemptor follows at once and keeps the amplifier on
            self._relay.off()
            self._off_at = None

    async def _stop_any(self) -> None:
        play, self._play = self._play, None
        if play is None or play.task.done():
            return
        play.cancel.set()
        done, _ = await asyncio.wait({play.task}, timeout=STOP_BUDGET_S)
        if not done:  # the player ignored the cancel event: cancel the task (its finally kills the child)
            play.task.cancel()
            await asyncio.wait({play.task}, timeout=STOP_BUDGET_S)

    # -- the playback chain --------------------------------------------------------------------------
    async def _run_play(self, s: Start, cancel: asyncio.Event) -> None:
        cfg, item = self._cfg, s.item
        t0 = time.monotonic()
        ok, reason, extra = True, None, {}
        if item.mime == LIVE_MIME:
            self.live.open(item)  # listen from now on: what is said during warm-up and chime is kept
        try:
            if not self._relay.is_on:
                self._relay.on()
                if await _pause(cfg.warmup_s, cancel):
                    return
            if self._chime is not None and await self._clip(self._chime, s.volume, cancel):
                return
            if s.drill and await self._clip(await self._marker(), s.volume, cancel):
                return
            lead = time.monotonic() - t0
            self._receipts.put_nowait(Notify(item.id, "started", extra={
                "lead_s": round(lead, 3), "late_s": None if s.late_s is None else round(s.late_s, 3),
                "volume": s.volume, "resumed": s.resumed, **fallback_mark(item.extra),
                **({"occurrence": s.occurrence} if s.occurrence is not None else {})}))
            if item.mime == LIVE_MIME:
                result = await self.live.play(item, s.volume, cancel)
            else:
                assert item.media is not None and item.mime is not None
                result = await self._player.play(self._dir / item.media, item.mime, s.volume, cancel,
                                                 timeout_s=cfg.max_play_s)
            if result.stopped:
                return
            if s.drill and await self._clip(await self._marker(), s.volume, cancel):
                return
            if await _pause(cfg.tail_s, cancel):
                return
            extra = {"duration_s": round(result.duration_s, 3), "total_s": round(time.monotonic() - t0, 3),
                     "expected_s": None if result.expected_s is None else round(result.expected_s, 3),
                     **self.live.stats.pop(item.id, {}), **fallback_mark(item.extra)}
        except (PlaybackError, MediaError) as exc:
            self._relay.off()  # the amplifier goes off at once when the player fails
            ok, reason = False, exc.reason
            log.warning("broadcast %s failed: %s", item.id, exc.reason)
        except TtsError as exc:
            self._relay.off()
            ok, reason = False, "tts_failed"
            log.warning("broadcast %s: drill marker failed: %s", item.id, exc)
        except BaseException:  # cancelled (shutdown, or a player that ignored `cancel`): off before anything
            self._relay_off_now()
            raise
        finally:
            self.live.discard(item.id)  # a live session stopped before it played: its subscription goes
        self._inbox.put_nowait(_Ended(s.token, ok, reason, extra))

    async def _clip(self, path: Path, volume: int, cancel: asyncio.Event) -> bool:
        """Play a short WAV (chime, marker); True when stopped."""
        result = await self._player.play(path, "audio/wav", volume, cancel, timeout_s=self._cfg.max_play_s)
        return result.stopped

    async def _marker(self) -> Path:
        path = self._dir / MARKER_FILE
        if not await asyncio.to_thread(path.is_file):
            await self._tts.synth(self._cfg.drill_marker, path)
        return path

    async def _prepare_chime(self) -> Path | None:
        chime = self._cfg.chime
        if not chime:
            return None
        if chime != "builtin":
            return Path(chime)
        path = self._dir / CHIME_FILE
        await asyncio.to_thread(write_atomic, path, chime_wav())
        return path

    async def _send_receipts(self) -> None:
        """Receipts in the order the engine made them; playback never waits for the outbox's fsync."""
        while True:
            n = await self._receipts.get()
            await self._ctx.receipts.send(n.cmd, n.state, reason=n.reason, **n.extra)

    # -- media files ---------------------------------------------------------------------------------
    def _forget(self, dirty: set[str]) -> set[str]:
        """Delete the audio of items that are gone; returns `dirty` for the store."""
        assert self._engine is not None
        for item_id in dirty - set(self._engine.items):
            for path in self._dir.glob(f"{media_stem(item_id)}.*"):
                path.unlink(missing_ok=True)
        return dirty

    def _sweep_media(self, keep: set[str]) -> None:
        for path in self._dir.iterdir():
            if path.name not in keep:  # the drill marker is spoken afresh (its text may have changed)
                path.unlink(missing_ok=True)


async def _pause(seconds: float, cancel: asyncio.Event) -> bool:
    """Wait `seconds` unless cancelled; True when cancelled."""
    if cancel.is_set():
        return True
    if seconds <= 0:
        return False
    try:
        await wait_within(cancel.wait(), seconds)
    except TimeoutError:
        return False
    return True


def make_services(ctx: AgentContext) -> list[Service]:
    hw = ctx.hardware
    if hw.relay is None or hw.player is None or hw.tts is None:
        raise BroadcastError("the broadcast feature needs hardware.relay, .player and .tts (agent/hardware.py)")
    service = BroadcastService(ctx, hw.relay, hw.player, hw.tts)
    ctx.commands.register("broadcast.play", service.on_play)
    ctx.commands.register("broadcast.cancel", service.on_cancel)
    ctx.commands.register("broadcast.live", service.on_live)
    return [service]
