"""Audio twins: a player that "plays" for the media's real duration (scaled), and the broadcast builder.

`TwinPlayer` follows the `AudioPlayer` contract of drivers/audio/player.py: the same MIME checks, the
same duration source (WAV header, else ffprobe), the same hang rule (killed when it runs past
duration * hang_factor + hang_slack_s, or past timeout_s), `cancel` honoured within a few ms, and the
same PlaybackError reasons. It can be told to crash or hang on the next play. `history` records every
play with its volume and how it ended, for tests to compare in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from drivers.audio.base import MAX_VOLUME, PlaybackError, PlayResult
from drivers.audio.hardware import BroadcastHardware, build_real_broadcast_hardware
from drivers.audio.media import canonical_mime, silence_wav, wav_duration
from drivers.audio.player import AlsaPlayer
from drivers.audio.tts import EspeakTts
from sim.amp import TwinAmpRelay

Fault = Literal["crash", "hang"]


@dataclass(frozen=True, slots=True)
class PlayRecord:
    t: float  # monotonic, when the event happened
    event: str  # "play", "end", "stopped", "crash", "killed"
    name: str  # file name of the source ("<bytes>" for bytes)
    volume: int

    def key(self) -> tuple[str, str, int]:
        return (self.event, self.name, self.volume)


class TwinPlayer:
    def __init__(self, *, speed: float = 1.0, hang_factor: float = 1.5, hang_slack_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.speed = speed
        self.hang_factor = hang_factor
        self.hang_slack_s = hang_slack_s
        self._clock = clock
        self.history: list[PlayRecord] = []
        self._faults: list[Fault] = []
        self._probe = AlsaPlayer()  # only for its ffprobe-based duration()
        self.playing: str | None = None

    def fail_next(self, fault: Fault) -> None:
        """The next play crashes (exits non-zero half way) or hangs (never ends until killed)."""
        self._faults.append(fault)

    def events(self) -> list[tuple[str, str, int]]:
        return [r.key() for r in self.history]

    def _log(self, event: str, name: str, volume: int) -> None:
        self.history.append(PlayRecord(self._clock(), event, name, volume))

    async def play(self, source: Path | bytes, mime: str, volume: int, cancel: asyncio.Event | None = None,
                   *, timeout_s: float = 900.0) -> PlayResult:
        canon = canonical_mime(mime)
        volume = max(0, min(MAX_VOLUME, int(volume)))
        name = source.name if isinstance(source, Path) else "<bytes>"
        if isinstance(source, Path):
            if not await asyncio.to_thread(source.is_file):
                raise PlaybackError("player_exit_1", f"cannot open {name}")
            expected = await self._probe.duration(source, canon)
        else:
            expected = wav_duration(source) if canon == "audio/wav" else None
        if expected is None:
            raise PlaybackError("decoder_exit_1", "unreadable media")
        fault = self._faults.pop(0) if self._faults else None
        # the hang rule in media time, scaled like the playing itself; the hard timeout is wall time
        limit = min(timeout_s, (expected * self.hang_factor + self.hang_slack_s) / self.speed)
        play_s = {None: expected / self.speed, "crash": expected / self.speed / 2, "hang": float("inf")}[fault]
        self._log("play", name, volume)
        self.playing = name
        t0 = time.monotonic()
        try:
            stopped = await _sleep_or_cancel(min(play_s, limit), cancel)
        finally:
            self.playing = None
        elapsed = time.monotonic() - t0
        if stopped:
            self._log("stopped", name, volume)
            return PlayResult(elapsed, stopped=True, expected_s=expected)
        if fault == "crash":
            self._log("crash", name, volume)
            raise PlaybackError("player_exit_1", "simulated crash")
        if play_s > limit:
            self._log("killed", name, volume)
            raise PlaybackError("timeout" if limit >= timeout_s else "hang")
        self._log("end", name, volume)
        return PlayResult(elapsed, expected_s=expected)


async def _sleep_or_cancel(seconds: float, cancel: asyncio.Event | None) -> bool:
    """Sleep; True when `cancel` was set first."""
    if cancel is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cancel.wait(), seconds)
        return True
    return False


class SilentTts:
    """TTS twin for machines without espeak-ng: a silent WAV, 0.25 s per character (about speech pace).

    `delay_s` makes every synthesis take that long first (a slow SD card, a long text on a Pi Zero), for
    tests of what must not wait behind it; `started` counts the syntheses begun.
    """

    def __init__(self, voice: str = "cmn", *, delay_s: float = 0.0) -> None:
        self.voice = voice
        self.delay_s = delay_s
        self.started = 0

    async def synth(self, text: str, out: Path) -> Path:
        self.started += 1
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        await asyncio.to_thread(out.write_bytes, silence_wav(min(0.25 * len(text), 60.0)))
        return out


def build_broadcast_hardware(profile: Any, sim: bool, *, voice: str = "cmn", speed: float = 1.0,
                             hang_slack_s: float = 10.0, **real: Any) -> BroadcastHardware:
    """Relay, player and TTS for the broadcast feature: twins when `sim`, else the real drivers.

    Used by sim.hardware (the "sim" kind's builder) and by tests. The sim TTS is the real espeak-ng when
    installed (it runs anywhere), else a silent twin.
    """
    if not sim:
        return build_real_broadcast_hardware(profile, voice=voice, hang_slack_s=hang_slack_s, **real)
    relay = TwinAmpRelay(profile.relay.pin if profile.relay.pin is not None else 17,
                         active_high=profile.relay.active_high)
    tts = EspeakTts(voice) if shutil.which("espeak-ng") else SilentTts(voice)
    return BroadcastHardware(relay=relay, player=TwinPlayer(speed=speed, hang_slack_s=hang_slack_s), tts=tts)
