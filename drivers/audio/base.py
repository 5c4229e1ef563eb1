"""What the broadcast feature needs from audio hardware: a player and a TTS engine, as Protocols."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

# Volume is a percentage 0..100 everywhere; the player maps it to its mixer or to software gain.
MAX_VOLUME = 100


class AudioError(Exception):
    """Base of the audio driver errors."""


class MediaError(AudioError):
    """Audio bytes that cannot be played: unknown type, wrong hash, too large, not what the mime says.

    `reason` is a short machine word for receipts (`hash_mismatch`, `audio_too_large`, ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PlaybackError(AudioError):
    """Playback did not complete: the player died, hung, or could not open the device.

    `reason` is short and safe to send upstream (`player_exit_1`, `hang`, `timeout`, `no_device`);
    `detail` is a sanitised, bounded excerpt of the child's stderr for the debug log only.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class TtsError(AudioError):
    """Text could not be turned into audio."""


@dataclass(frozen=True, slots=True)
class PlayResult:
    duration_s: float  # measured wall time from the first sample handed over to the end (or stop)
    stopped: bool = False  # True when `cancel` was set and playback was cut short
    expected_s: float | None = None  # the media's own duration, when it could be read


@runtime_checkable
class AudioPlayer(Protocol):
    async def play(self, source: Path | bytes, mime: str, volume: int, cancel: asyncio.Event | None = None,
                   *, timeout_s: float = 900.0) -> PlayResult:
        """Play `source` (a file, or the bytes of one) to the end at `volume` percent.

        Returns early with `stopped=True` when `cancel` is set (within ~0.5 s). Raises PlaybackError when
        the player dies, hangs (no end long after the media's duration) or runs past `timeout_s`; the
        player process is killed in every case. The previous mixer level is restored afterwards.
        """
        ...


@runtime_checkable
class Tts(Protocol):
    voice: str

    async def synth(self, text: str, out: Path) -> Path:
        """Speak `text` into a WAV file at `out` (written atomically); returns `out`. Raises TtsError."""
        ...
