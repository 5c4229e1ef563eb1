"""Media work for the web console's compose page: a TTS preview, checking and fitting uploaded audio, CAP drafts.

- `tts_preview(text)`: the text spoken by espeak-ng on the server with the voice the boxes use (`cmn`, the
  box's `[broadcast] tts_voice` default; the same `drivers.audio.tts.EspeakTts` the box runs), then encoded
  to Ogg/Opus with ffmpeg so a long notice is a few hundred KB for the browser, not tens of MB of WAV.
- `fit_audio(data)`: an upload is probed with ffprobe (what the bytes are, not what the file name says):
  MP3, WAV, Ogg (Opus/Vorbis/FLAC) or Opus are taken; anything else is refused. Audio over the inline limit
  of a signed command (`county.push.MAX_AUDIO_BYTES`, 2 MiB: the box's own `max_audio_bytes` is larger) is
  re-encoded to mono Ogg/Opus at the highest bitrate that fits; audio too long to fit even at the lowest
  usable bitrate is refused with how long may fit. The answer says the result's length and size.
- `cap_draft(xml)`: a CAP 1.2 document (county/cap.py parses and maps it) as the compose form's fields.

Every child (espeak-ng, ffprobe, ffmpeg) runs with its input on stdin or in a private temp directory, a
timeout (killed when it passes), and its output bounded; what a child prints reaches a log line or an answer
only through `agent.protocol.text.escape`. At most `MAX_CHILDREN` children run at once per process, so a
burst of previews cannot eat the county server's CPU.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.i18n import N_
from agent.protocol.text import escape
from county import cap, push
from drivers.aio import wait_within
from drivers.audio.base import TtsError
from drivers.audio.media import sniff
from drivers.audio.tts import EspeakTts

log = logging.getLogger("county.media")

VOICE = "cmn"                      # the box's [broadcast] tts_voice default (agent/broadcast/settings.py)
MAX_PREVIEW_CHARS = 2000           # the box's max_text_chars default, = the broadcast route's text limit
MAX_UPLOAD_BYTES = 12 * 1024 * 1024
LIMIT_BYTES = push.MAX_AUDIO_BYTES  # what one signed command carries inline
BOX_MAX_PLAY_S = 900.0              # the box's max_play_s default: a longer clip is stopped and `failed`
CHILD_TIMEOUT_S = 60.0
MAX_CHILDREN = 2
MIN_KBPS, MAX_KBPS = 8, 64          # Opus mono speech: 8 kbps is still intelligible, 64 is transparent
MAX_CHILD_OUTPUT = 64 * 1024 * 1024
# ffprobe's format names -> (the box's canonical MIME); Ogg holds Opus, Vorbis or FLAC, all of which the
# box's ffmpeg decodes
FORMATS = {"mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg"}
OGG_CODECS = frozenset({"opus", "vorbis", "flac"})

_gate: dict[int, asyncio.Semaphore] = {}


class MediaError(Exception):
    """Input this module will not take; `status` is the HTTP answer, `str()` the reason in words."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def _semaphore() -> asyncio.Semaphore:
    loop = id(asyncio.get_running_loop())
    if loop not in _gate:
        _gate.clear()  # one loop per process in the server; tests start new ones
        _gate[loop] = asyncio.Semaphore(MAX_CHILDREN)
    return _gate[loop]


async def run_child(argv: list[str], *, stdin: bytes | None = None, limit_s: float = CHILD_TIMEOUT_S,
                    ) -> tuple[int, bytes, str]:
    """(exit code, stdout, stderr escaped to one line) of a child; killed at `limit_s` (MediaError 504)."""
    async with _semaphore():
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            log.error("cannot run %s: %s", argv[0], exc.strerror)
            raise MediaError(503, N_("this server cannot run {argv}", argv=argv[0]), "tool_missing") from None
        try:
            out, err = await wait_within(proc.communicate(stdin), limit_s)
        except TimeoutError:
            log.warning("%s took longer than %.0f s; killed", argv[0], limit_s)
            raise MediaError(503, N_("{argv} took longer than {limit_s:.0f} s",
                                     argv=argv[0], limit_s=limit_s), "timeout") from None
        finally:  # a timeout or a cancelled request: no child outlives the call
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    if len(out) > MAX_CHILD_OUTPUT:
        raise MediaError(413, N_("{argv} produced more than {max_child_output} bytes",
                                 argv=argv[0], max_child_output=MAX_CHILD_OUTPUT), "too_large")
    return proc.returncode or 0, out, escape(err.decode("utf-8", "replace").strip(), 300)


# ------------------------------------------------------------------------------------------ probing
@dataclass(frozen=True, slots=True)
class Probe:
    format: str            # ffprobe's format name, first of its list (mp3, wav, ogg, ...)
    codec: str             # the first audio stream's codec
    duration_s: float
    channels: int
    sample_rate: int
    bytes: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# the demuxer ffprobe/ffmpeg are told to use for each magic (never their guess: a playlist or concat file
# "probed" by content would make them open other files or URLs)
DEMUXER = {"audio/wav": "wav", "audio/mpeg": "mp3", "audio/ogg": "ogg"}


def _demuxer(data: bytes) -> str:
    kind = sniff(data)
    if kind is None:
        raise MediaError(415, N_("the file is not MP3, WAV, Ogg or Opus"), "audio_type")
    return DEMUXER[kind]


async def probe(data: bytes) -> Probe:
    """What the bytes are, from ffprobe; MediaError 415 when it is no audio ffprobe can read."""
    demuxer = _demuxer(data)
    with tempfile.TemporaryDirectory(prefix="vc-probe-") as tmp:
        path = Path(tmp) / "upload"
        await asyncio.to_thread(path.write_bytes, data)
        rc, out, err = await run_child(["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-f", demuxer,
                                        "-print_format", "json", "-show_format", "-show_streams", str(path)],
                                       limit_s=30)
    if rc != 0:
        log.info("ffprobe refused an upload: %s", err)
        raise MediaError(415, N_("the file is not audio this server can read"), "not_audio")
    try:
        info = json.loads(out)
        fmt = str(info["format"]["format_name"]).split(",")[0]
        streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
        duration = float(info["format"].get("duration") or streams[0].get("duration") or 0)
    except (ValueError, KeyError, IndexError, TypeError):
        raise MediaError(415, N_("the file is not audio this server can read"), "not_audio") from None
    if not streams:
        raise MediaError(415, N_("the file has no audio stream"), "not_audio")
    s = streams[0]
    return Probe(format=fmt, codec=str(s.get("codec_name", "")), duration_s=round(duration, 3),
                 channels=int(s.get("channels") or 0), sample_rate=int(s.get("sample_rate") or 0), bytes=len(data))


def mime_of(p: Probe) -> str | None:
    """The box's MIME for a probed file, None for a format the box does not play."""
    if p.format == "ogg" and p.codec not in OGG_CODECS:
        return None
    if p.format == "wav" and not p.codec.startswith("pcm_"):
        return None  # ADPCM or GSM in a WAV: the box's aplay fast path would refuse it; re-encode
    if p.format == "mp3" and p.codec != "mp3":
        return None
    return FORMATS.get(p.format)


# ------------------------------------------------------------------------------------------ fitting
@dataclass
class Fitted:
    data: bytes
    mime: str
    duration_s: float
    reencoded: bool
    kbps: int | None
    source: Probe
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"audio_b64": base64.b64encode(self.data).decode("ascii"), "audio_mime": self.mime,
                "sha256": hashlib.sha256(self.data).hexdigest(), "bytes": len(self.data),
                "duration_s": self.duration_s, "reencoded": self.reencoded, "kbps": self.kbps,
                "limit_bytes": LIMIT_BYTES, "source": self.source.as_json(), "warnings": self.warnings}


def bitrate_for(duration_s: float, limit: int = LIMIT_BYTES) -> int:
    """The Opus bitrate (kbps) whose output fits `limit` for `duration_s`, with 8 % for Ogg pages and VBR."""
    return int(limit * 8 * 0.92 / max(duration_s, 0.1) / 1000)


async def encode_opus(data: bytes, kbps: int) -> bytes:
    """Mono 48 kHz Ogg/Opus at `kbps` (speech settings); MediaError 422 when ffmpeg cannot decode it."""
    with tempfile.TemporaryDirectory(prefix="vc-enc-") as tmp:
        src, dst = Path(tmp) / "in", Path(tmp) / "out.ogg"
        await asyncio.to_thread(src.write_bytes, data)
        rc, _, err = await run_child(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
                                      "-protocol_whitelist", "file", "-f", _demuxer(data), "-i", str(src),
                                      "-vn", "-map_metadata", "-1", "-ac", "1", "-ar", "48000", "-c:a", "libopus",
                                      "-b:a", f"{kbps}k", "-application", "voip", "-f", "ogg", str(dst)])
        if rc != 0 or not dst.is_file():
            log.info("ffmpeg could not re-encode an upload (exit %d): %s", rc, err)
            raise MediaError(422, N_("the audio could not be decoded for re-encoding"), "decode_failed")
        return await asyncio.to_thread(dst.read_bytes)


async def fit_audio(data: bytes, limit: int = LIMIT_BYTES) -> Fitted:
    """The upload as the box will get it: unchanged when the box plays it and it fits, else Ogg/Opus."""
    if not data:
        raise MediaError(400, N_("the file is empty"), "empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise MediaError(413, N_("the file is {data} bytes; uploads are limited to {max_upload_bytes}",
                                 data=len(data), max_upload_bytes=MAX_UPLOAD_BYTES),
                         "too_large")
    p = await probe(data)
    if p.duration_s <= 0:
        raise MediaError(422, N_("the audio has no length"), "empty")
    mime = mime_of(p)
    if mime is None and p.format not in ("mp3", "wav", "ogg"):
        raise MediaError(415, N_("{format} is not MP3, WAV, Ogg or Opus", format=p.format), "audio_type")
    warnings = []
    if p.duration_s > BOX_MAX_PLAY_S:
        warnings.append(f"longer than the boxes' play limit ({BOX_MAX_PLAY_S:.0f} s, max_play_s): "
                        "they stop it and report failed")
    if mime is not None and len(data) <= limit and sniff(data) == mime:
        return Fitted(data, mime, p.duration_s, False, None, p, warnings)
    kbps = min(MAX_KBPS, bitrate_for(p.duration_s, limit))
    if kbps < MIN_KBPS:
        most = limit * 8 * 0.92 / (MIN_KBPS * 1000)
        raise MediaError(413, N_("the audio is {minutes:.1f} min; at most {most:.1f} min fits the {kib} KiB a "
                                 "broadcast carries", minutes=p.duration_s / 60, most=most / 60, kib=limit // 1024),
                         "too_long")
    out = await encode_opus(data, kbps)
    while len(out) > limit and kbps > MIN_KBPS:  # VBR overshot: step down until it fits
        kbps = max(MIN_KBPS, int(kbps * 0.8))
        out = await encode_opus(data, kbps)
    if len(out) > limit:
        raise MediaError(413, N_("the audio does not fit even at the lowest bitrate"), "too_long")
    q = await probe(out)
    return Fitted(out, "audio/ogg", q.duration_s, True, kbps, p, warnings)


# ------------------------------------------------------------------------------------------ TTS preview
async def tts_preview(text: str, voice: str = VOICE) -> bytes:
    """`text` spoken by espeak-ng (`voice`), as Ogg/Opus bytes; MediaError on bad text or a failing child."""
    if not isinstance(text, str) or not text.strip():
        raise MediaError(400, N_("no text to speak"), "empty")
    if len(text) > MAX_PREVIEW_CHARS:
        raise MediaError(413, N_("text is {text} characters; the boxes speak at most {max_preview_chars}",
                                 text=len(text), max_preview_chars=MAX_PREVIEW_CHARS),
                         "text_too_long")
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate cannot reach the child
    with tempfile.TemporaryDirectory(prefix="vc-tts-") as tmp:
        wav = Path(tmp) / "speech.wav"
        try:
            async with _semaphore():
                await EspeakTts(voice).synth(text, wav)
        except TtsError as exc:
            log.warning("preview: espeak-ng failed: %s", escape(str(exc), 300))
            raise MediaError(503, N_("the server could not speak the text (see its log)"), "tts_failed") from None
        raw = await asyncio.to_thread(wav.read_bytes)
    return await encode_opus(raw, 32)


# ------------------------------------------------------------------------------------------ CAP
def _local(ts: int | None, tz: dt.tzinfo) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%dT%H:%M")


def cap_draft(data: bytes, now: float, tz: dt.tzinfo) -> dict[str, Any]:
    """The compose form's fields from a CAP 1.2 document; MediaError 422 with CapError's words otherwise."""
    try:
        alert = cap.parse_cap(data)
        p = cap.plan(alert, now)
    except cap.CapError as exc:
        raise MediaError(422, N_("CAP: {exc}", exc=exc), "bad_cap") from None
    out: dict[str, Any] = {"broadcast_id": p.broadcast_id, "cancels": list(p.cancels), "msg_type": alert.msg_type,
                           "status": alert.status, "sender": alert.sender, "identifier": alert.identifier}
    if p.play is not None:
        play = p.play
        out.update({"class": play["class"], "level": play["level"], "title": play["title"], "text": play["text"],
                    "start": _local(play["start"], tz), "end": _local(play["end"], tz),
                    "end_past": play["end"] is not None and play["end"] <= now})
        if len(play["text"]) > MAX_PREVIEW_CHARS:
            out["text"] = play["text"][:MAX_PREVIEW_CHARS]
            out["truncated"] = True
    return out


def kbps_floor_minutes(limit: int = LIMIT_BYTES) -> float:
    """How many minutes of audio fit the limit at the lowest bitrate (for the page's hint)."""
    return math.floor(limit * 8 * 0.92 / (MIN_KBPS * 1000) / 60 * 10) / 10
