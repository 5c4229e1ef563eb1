"""Audio out and text to speech for the loudspeakers: Protocols, the real ALSA player, espeak-ng."""

from drivers.audio.base import (
    AudioError,
    AudioPlayer,
    MediaError,
    PlaybackError,
    PlayResult,
    Tts,
    TtsError,
)

__all__ = ["AudioError", "AudioPlayer", "MediaError", "PlayResult", "PlaybackError", "Tts", "TtsError"]
