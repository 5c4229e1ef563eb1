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
from agent.broadcast.items import BadBroadcast, BroadcastError, Item, PlayRequest, parse_cancel, parse_play
from agent.broadcast.settings import BroadcastConfig
from agent.broadcast.store import BroadcastStore
from agent.context import AgentContext
from agent.protocol.commands import Command
from agent.service import Service
from drivers.amp.relay import AmpRelay
from drivers.audio.base import AudioPlayer, MediaError, PlaybackError, Tts, TtsError
from drivers.audio.media import chime_wav, decode_audio

log = logging.getLogger("agent.broadcast")

MAX_NAP_S = 30.0  # re-check at least this often: the wall clock may jump (NTP sync, RTC-less boot)
STOP_BUDGET_S = 1.0  # a stopped play must be gone within this (cancel within 1 s)
AUDIO_DIR = "broadcast-audio"
CHIME_FILE = "chime.wav"
MARKER_FILE = "drill-marker.wav"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


def media_stem(item_id: str) -> str:
    """A file name stem for an item's audio: the id itself when it is a safe name, else a hash of it."""
    return item_id if _SAFE_NAME.match(item_id) and not item_id.startswith(".") else \
        hashlib.sha256(item_id.encode()).hexdigest()[:32]


@dataclass
class _Play:
    token: int
    item_id: str
    cancel: asyncio.Event
    task: asyncio.Task[None]


class BroadcastService:
    name = "broadcast"

    def __init__(self, ctx: AgentContext, relay: AmpRelay, player: AudioPlayer, tts: Tts) -> None:
        self._ctx = ctx
        self._cfg: BroadcastConfig = ctx.config.broadcast
        self._relay = relay
        self._player = player
        self._tts = tts
        self._dir = ctx.config.box.state_dir / AUDIO_DIR
        self._inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._receipts: asyncio.Queue[Notify] = asyncio.Queue()
        self._engine: Engine | None = None
        self._play: _Play | None = None
        self._off_at: float | None = None  # monotonic time to switch the relay off, when idle
        self._chime: Path | None = None
        self._pending_media: set[str] = set()  # written by a handler, not yet handed to the engine
        self._time_floor = 0.0  # newest signed county time (command iat) seen this run; see engine.synced

    @property
    def engine(self) -> Engine | None:
        return self._engine

    # -- command handlers (called by the command router, possibly before run() starts) ---------------
    def _saw_signed_time(self, cmd: Command) -> None:
        """A verified command's `iat` is county time the box clock must have reached (engine.time_floor)."""
        if cmd.iat > self._time_floor:
            self._time_floor = float(cmd.iat)

    async def on_play(self, cmd: Command) -> None:
        self._saw_signed_time(cmd)
        received = self._ctx.clock.time()
        try:
            req = parse_play(cmd.data, default_tz=self._cfg.timezone, max_text_chars=self._cfg.max_text_chars)
            media, mime = await self._prepare_media(cmd.id, req)
        except (BadBroadcast, MediaError) as exc:
            log.warning("broadcast %s rejected: %s", cmd.id, exc.reason)
            await self._ctx.receipts.send(cmd.id, "rejected", reason=exc.reason, detail=exc.detail)
            return
        except TtsError as exc:
            log.warning("broadcast %s: text to speech failed: %s", cmd.id, exc)
            await self._ctx.receipts.send(cmd.id, "failed", reason="tts_failed")
            return
        self._pending_media.add(media)
        item = Item(cmd.id, req.cls, req.level, req.title, req.text, media, mime, req.volume, req.start,
                    req.end, req.repeat, 0, received)
        self._inbox.put_nowait(("add", item))

    async def on_cancel(self, cmd: Command) -> None:
        self._saw_signed_time(cmd)
        try:
            target = parse_cancel(cmd.data)
        except BadBroadcast as exc:
            await self._ctx.receipts.send(cmd.id, "rejected", reason=exc.reason, detail=exc.detail)
            return
        self._inbox.put_nowait(("cancel", cmd.id, target))

    async def _prepare_media(self, item_id: str, req: PlayRequest) -> tuple[str, str]:
        """Check and store the audio, or speak the text: nothing is scheduled that cannot be played."""
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        stem = media_stem(item_id)
        if req.audio is not None:
            a = req.audio
            media = await asyncio.to_thread(decode_audio, a["mime"], a["sha256"], a["b64"], self._cfg.max_audio_bytes)
            name = f"{stem}.{media.ext}"
            await asyncio.to_thread(_write_atomic, self._dir / name, media.data)
            return name, media.mime
        name = f"{stem}.wav"
        await self._tts.synth(req.text, self._dir / name)
        return name, "audio/wav"

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
                    tg.create_task(self._send_receipts(), name="broadcast.receipts")
                    ready()
                    await self._loop(tg, store)
            finally:
                await store.close()
        finally:
            self._relay.off()

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
                msg = await asyncio.wait_for(self._inbox.get(), nap)
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

    def _handle(self, engine: Engine, msg: tuple[Any, ...]) -> list[Effect]:
        clock = self._ctx.clock
        self._update_floor(engine)
        match msg:
            case ("add", Item() as item):
                self._pending_media.discard(item.media or "")
                return engine.add(item, clock.time(), clock.monotonic())
            case ("cancel", str(cmd_id), target):
                return engine.cancel(cmd_id, target)
            case ("ended", int(token), bool(ok), reason, dict(extra)):
                if self._play is not None and self._play.token == token:
                    self._play = None
                    self._off_at = clock.monotonic() + (self._cfg.off_delay_s if ok else 0.0)
                return engine.ended(token, ok, reason, extra)
        raise BroadcastError(f"unknown inbox message {msg[0]!r}")  # a bug, not an input

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
                "volume": s.volume, "resumed": s.resumed,
                **({"occurrence": s.occurrence} if s.occurrence is not None else {})}))
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
                     "expected_s": None if result.expected_s is None else round(result.expected_s, 3)}
        except (PlaybackError, MediaError) as exc:
            self._relay.off()  # the amplifier goes off at once when the player fails
            ok, reason = False, exc.reason
            log.warning("broadcast %s failed: %s", item.id, exc.reason)
        except TtsError as exc:
            self._relay.off()
            ok, reason = False, "tts_failed"
            log.warning("broadcast %s: drill marker failed: %s", item.id, exc)
        self._inbox.put_nowait(("ended", s.token, ok, reason, extra))

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
        await asyncio.to_thread(_write_atomic, path, chime_wav())
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
        await asyncio.wait_for(cancel.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def make_services(ctx: AgentContext) -> list[Service]:
    hw = ctx.hardware
    if hw.relay is None or hw.player is None or hw.tts is None:
        raise BroadcastError("the broadcast feature needs hardware.relay, .player and .tts (agent/hardware.py)")
    service = BroadcastService(ctx, hw.relay, hw.player, hw.tts)
    ctx.commands.register("broadcast.play", service.on_play)
    ctx.commands.register("broadcast.cancel", service.on_cancel)
    return [service]
