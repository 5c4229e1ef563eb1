"""Audio payloads without I/O: MIME types, magic-byte checks, sha256, WAV durations, a built-in chime.

Sans-I/O on purpose (no asyncio, no subprocess): the command handler checks an audio payload before
anything is scheduled, and the twin player reads durations from here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import struct
import wave
from dataclasses import dataclass
from typing import Any

from drivers.audio.base import MediaError

# canonical MIME -> file extension; aliases map onto the canonical names
KINDS: dict[str, str] = {"audio/wav": "wav", "audio/mpeg": "mp3", "audio/ogg": "ogg"}
ALIASES: dict[str, str] = {
    "audio/wav": "audio/wav", "audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/vnd.wave": "audio/wav",
    "audio/mpeg": "audio/mpeg", "audio/mp3": "audio/mpeg",
    "audio/ogg": "audio/ogg", "audio/opus": "audio/ogg", "audio/ogg; codecs=opus": "audio/ogg",
}


def canonical_mime(mime: str) -> str:
    key = mime.strip().lower()
    if key not in ALIASES:
        raise MediaError("audio_type", f"unsupported audio type {mime[:40]!r} (WAV, MP3, Ogg/Opus)")
    return ALIASES[key]


def sniff(data: bytes) -> str | None:
    """The canonical MIME the bytes look like, or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[:4] == b"OggS":
        return "audio/ogg"
    if data[:3] == b"ID3" or (len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    return None


@dataclass(frozen=True, slots=True)
class Media:
    data: bytes
    mime: str  # canonical
    sha256: str

    @property
    def ext(self) -> str:
        return KINDS[self.mime]


def decode_audio(mime: str, sha256: str, b64: str, max_bytes: int) -> Media:
    """Check and decode a command's `audio` object. Every failure is a MediaError with a receipt reason."""
    canon = canonical_mime(mime)
    if not isinstance(b64, str):
        raise MediaError("bad_audio", "b64 is not a string")
    # 4 base64 characters carry 3 bytes: refuse oversize before decoding anything
    if len(b64) // 4 * 3 > max_bytes + 3:
        raise MediaError("audio_too_large", f"about {len(b64) // 4 * 3} bytes, limit {max_bytes}")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError("bad_audio", f"not base64: {exc}") from None
    if len(data) > max_bytes:
        raise MediaError("audio_too_large", f"{len(data)} bytes, limit {max_bytes}")
    if not data:
        raise MediaError("bad_audio", "empty")
    digest = hashlib.sha256(data).hexdigest()
    if not isinstance(sha256, str) or digest != sha256.strip().lower():
        raise MediaError("hash_mismatch", "sha256 of the audio does not match the command")
    if sniff(data) != canon:
        raise MediaError("audio_type", f"bytes are not {canon}")
    return Media(data, canon, digest)


def wav_duration(data: bytes) -> float | None:
    """Duration of a PCM WAV in seconds from its header, or None when it is not one we can read."""
    return _duration(io.BytesIO(data), len(data))


def wav_file_duration(path: str | os.PathLike[str]) -> float | None:
    """Like wav_duration, reading only the header of a file (blocking: call it in a thread)."""
    try:
        with open(path, "rb") as f:
            return _duration(f, os.fstat(f.fileno()).st_size)
    except OSError:
        return None


def _duration(f: Any, size: int) -> float | None:
    """Frames from the header, but never more than the bytes present: a WAV written to a pipe (sox, ffmpeg
    streaming) carries a placeholder length of ~2**31 in its header."""
    try:
        with wave.open(f, "rb") as w:
            rate, width = w.getframerate(), w.getsampwidth() * w.getnchannels()
            if not rate or not width:
                return None
            return min(w.getnframes(), max(0, size - 44) // width) / rate
    except (wave.Error, EOFError, struct.error):
        return None


def chime_wav(rate: int = 16000) -> bytes:
    """A two-tone "ding-dong" (G5 then E5, 0.35 s each, with decay) as a 16-bit mono WAV.

    Written by hand because it is twenty lines and saves shipping a binary asset or a sox dependency.
    """
    frames = bytearray()
    for freq in (783.99, 659.25):
        n = int(rate * 0.35)
        for i in range(n):
            env = math.exp(-4.0 * i / n)
            frames += struct.pack("<h", int(12000 * env * math.sin(2 * math.pi * freq * i / rate)))
    return pcm_wav(bytes(frames), rate)


def silence_wav(seconds: float, rate: int = 16000) -> bytes:
    return pcm_wav(b"\x00\x00" * int(rate * seconds), rate)


def pcm_wav(frames: bytes, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()
