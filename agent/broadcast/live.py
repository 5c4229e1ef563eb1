"""Live broadcast (实时喊话) on the box: the `broadcast.live` command, the audio packets, the jitter buffer.

A live session starts with a signed `broadcast.live` command (checked by the router like every command).
Its data names the session, the class and level (it takes part in the engine's priority, preemption and
quiet hours as an ordinary item), the codec, a maximum duration and a per-session Ed25519 public key.
The audio then arrives over MQTT QoS 0 on `{prefix}/live/{session}/audio`, one packet per message:

    "VL" 0x01 | flags u8 | tag 8 bytes | seq u32 | pos u32 | n u8 | n x (len u16, Opus packet) | sig 64 bytes

all integers big-endian. `tag` = sha256(session)[:8] (a packet of another session is told apart before the
signature check); `seq` counts packets from 0; `pos` is the stream position of the first frame in samples
at the session's rate; flag 0x01 = END (the speaker pressed 结束; no frames). `sig` is Ed25519 by the
session key over b"village-live/1\\0" + session + b"\\0" + everything before the signature. The private key
lives only in the county server's memory for the session; a packet from an earlier session (other key,
other tag), a forged one, a duplicate, or one after the session ended is dropped and counted.

Pure code here (parsing, packet check, jitter buffer); the service plays it (live_player.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.broadcast.items import BadBroadcast, Klass, parse_class_level
from agent.protocol.text import scrub

LIVE_MIME = "application/x-village-live"  # Item.mime of a live session (it has no media file)
SESSION_RE = re.compile(r"[A-Za-z0-9_-]{8,64}\Z")  # safe as an MQTT topic level and a file name
MAGIC = b"VL\x01"
FLAG_END = 0x01
HEADER = struct.Struct(">3sB8sIIB")
SIG_BYTES = 64
MAX_FRAMES = 12
MAX_PACKET_BYTES = 16384
SIGNED_PREFIX = b"village-live/1\x00"
RATES = (8000, 12000, 16000, 24000, 48000)
MAX_LIVE_S = 3600


def audio_topic(prefix: str, session: str) -> str:
    return f"{prefix}/live/{session}/audio"


def session_tag(session: str) -> bytes:
    return hashlib.sha256(session.encode("ascii")).digest()[:8]


@dataclass(frozen=True, slots=True)
class LiveSpec:
    """A validated `broadcast.live` data object."""

    session: str
    cls: Klass
    level: int
    title: str
    volume: int | None
    rate: int
    channels: int
    max_s: float
    key: bytes  # raw Ed25519 public key, 32 bytes

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "rate": self.rate, "channels": self.channels, "max_s": self.max_s,
                "key": base64.urlsafe_b64encode(self.key).decode().rstrip("=")}

    @classmethod
    def from_item_extra(cls, extra: dict[str, Any], klass: Klass, level: int, title: str,
                        volume: int | None) -> LiveSpec:
        return cls(extra["session"], klass, level, title, volume, int(extra["rate"]), int(extra["channels"]),
                   float(extra["max_s"]), _b64(extra["key"]))


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_live(data: Any, *, max_s_limit: float) -> LiveSpec:
    """`broadcast.live` data -> LiveSpec, or BadBroadcast('bad_data', why)."""
    if not isinstance(data, dict):
        raise BadBroadcast("bad_data", "data must be an object")
    session = data.get("session")
    if not isinstance(session, str) or not SESSION_RE.fullmatch(session):
        raise BadBroadcast("bad_data", "session must be 8-64 of [A-Za-z0-9_-]")
    cls, level = parse_class_level(data)
    title = data.get("title") or ""
    if not isinstance(title, str) or len(title) > 200:
        raise BadBroadcast("bad_data", "title must be a string of at most 200 characters")
    volume = data.get("volume")
    if volume is not None and (isinstance(volume, bool) or not isinstance(volume, int) or not 0 <= volume <= 100):
        raise BadBroadcast("bad_data", "volume must be 0..100 or null")
    codec = data.get("codec")
    if not isinstance(codec, dict) or codec.get("name") != "opus":
        raise BadBroadcast("bad_data", "codec must be {name: opus, rate, channels}")
    rate, channels = codec.get("rate", 48000), codec.get("channels", 1)
    if rate not in RATES or isinstance(rate, bool) or channels not in (1, 2) or isinstance(channels, bool):
        raise BadBroadcast("bad_data", f"codec.rate must be one of {RATES}, codec.channels 1 or 2")
    max_s = data.get("max_s")
    if isinstance(max_s, bool) or not isinstance(max_s, (int, float)) or not 0 < max_s <= MAX_LIVE_S:
        raise BadBroadcast("bad_data", f"max_s must be 1..{MAX_LIVE_S} seconds")
    key = data.get("key")
    try:
        raw = _b64(key) if isinstance(key, str) and len(key) <= 64 else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise BadBroadcast("bad_data", "key must be a raw Ed25519 public key, base64url (32 bytes)")
    return LiveSpec(session, cls, level, scrub(title), volume, int(rate), int(channels),
                    float(min(max_s, max_s_limit)), raw)


def fallback_mark(data: dict[str, Any]) -> dict[str, Any]:
    """`{"live_fallback": session}` when a broadcast.play is the recording of a live session this box could
    not hear well (the county sends it; docs/live-broadcast.md), for its receipts; else {}."""
    value = data.get("live_fallback")
    return {"live_fallback": value} if isinstance(value, str) and SESSION_RE.fullmatch(value) else {}


# ------------------------------------------------------------------------------------------- packets
@dataclass(frozen=True, slots=True)
class Packet:
    seq: int
    pos: int
    end: bool
    frames: tuple[bytes, ...]


def encode_packet(key: Ed25519PrivateKey, session: str, seq: int, pos: int, frames: list[bytes] | tuple[bytes, ...],
                  *, end: bool = False) -> bytes:
    """The sender's side (the county server, the simulator, tests)."""
    if len(frames) > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames per packet")
    body = bytearray(HEADER.pack(MAGIC, FLAG_END if end else 0, session_tag(session), seq & 0xFFFFFFFF,
                                 pos & 0xFFFFFFFF, len(frames)))
    for f in frames:
        body += struct.pack(">H", len(f)) + f
    return bytes(body) + key.sign(SIGNED_PREFIX + session.encode("ascii") + b"\x00" + bytes(body))


class PacketGate:
    """Admits a session's packets: shape, session tag, signature, once. Every refusal is counted."""

    def __init__(self, session: str, public_key: bytes) -> None:
        self.session = session
        self._tag = session_tag(session)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)
        self._signed = SIGNED_PREFIX + session.encode("ascii") + b"\x00"
        self._seen: set[int] = set()
        self._low = -1  # every seq <= this has been dealt with (seen or given up)
        self.counters: Counter[str] = Counter()

    def admit(self, raw: bytes, retained: bool = False) -> Packet | None:
        c = self.counters
        if retained:
            c["dropped.retained"] += 1
            return None
        if len(raw) < HEADER.size + SIG_BYTES or len(raw) > MAX_PACKET_BYTES:
            c["dropped.malformed"] += 1
            return None
        magic, flags, tag, seq, pos, n = HEADER.unpack_from(raw)
        if magic != MAGIC:
            c["dropped.malformed"] += 1
            return None
        if tag != self._tag:
            c["dropped.other_session"] += 1
            return None
        body, sig = raw[:-SIG_BYTES], raw[-SIG_BYTES:]
        try:
            self._key.verify(sig, self._signed + body)
        except InvalidSignature:
            c["dropped.bad_signature"] += 1
            return None
        frames: list[bytes] = []
        at = HEADER.size
        for _ in range(n):
            if at + 2 > len(body):
                break
            (length,) = struct.unpack_from(">H", body, at)
            frames.append(body[at + 2:at + 2 + length])
            at += 2 + length
        if at != len(body) or any(not f for f in frames) or len(frames) != n:
            c["dropped.malformed"] += 1  # signed but malformed: a county bug, still never played
            return None
        if seq <= self._low or seq in self._seen:
            c["dropped.duplicate"] += 1
            return None
        self._seen.add(seq)
        if len(self._seen) > 4096:  # bounded memory: forget the oldest, refuse anything at or below them
            drop = sorted(self._seen)[:2048]
            self._low = drop[-1]
            self._seen.difference_update(drop)
        c["accepted"] += 1
        return Packet(seq, pos, bool(flags & FLAG_END), tuple(frames))


# -------------------------------------------------------------------------------------- jitter buffer
class JitterBuffer:
    """Packets in, due frames out, on the box's monotonic clock.

    The first packet anchors the stream: its position plays `target` seconds after it arrived. `base` is
    the earliest (arrival - pos/rate) seen, i.e. when the stream's position 0 would have arrived over a
    link without queueing; a packet's *transit* is how far after that it came. The target delay follows
    the recent transit spread (p95 over the last `window` packets + one frame), between `min_s` and
    `max_s`; the player moves toward it one frame at a time, by concealing one frame more (grow) or
    skipping a quiet one (shrink: never a frame of speech), so the sound never jumps. A packet whose time
    has passed when it arrives is `late` (dropped, counted); a missing one is concealed when its time comes.
    """

    def __init__(self, rate: int, *, min_s: float = 0.2, max_s: float = 0.5, start_s: float = 0.3,
                 window: int = 100) -> None:
        self.rate = rate
        self.min_s, self.max_s = min_s, max_s
        self.target = start_s
        self.window = window
        self.frames: dict[int, bytes] = {}  # pos -> Opus packet (one frame each; a packet may hold several)
        self.base: float | None = None
        self.next_pos: int | None = None  # the next position to play
        self.next_t = 0.0  # monotonic time when next_pos plays
        self._transits: list[float] = []
        self.counters: Counter[str] = Counter()
        self.frame_samples = rate // 50  # until the first packet says (20 ms)
        self.ended = False
        self.last_arrival: float | None = None

    def put(self, pkt: Packet, arrival: float, samples_of: Any) -> None:
        """Add a packet's frames (samples_of(frame) -> samples per channel)."""
        self.last_arrival = arrival
        if pkt.end:
            self.ended = True
            return
        if not pkt.frames:
            return
        self.counters["packets"] += 1
        lag = arrival - pkt.pos / self.rate
        if self.base is None:
            self.base = lag
            self.next_pos = pkt.pos
            self.next_t = arrival + self.target
        elif lag < self.base:
            self.base = lag
        self._transits.append(lag - self.base)
        if len(self._transits) > self.window:
            del self._transits[0]
        assert self.next_pos is not None
        pos = pkt.pos
        for f in pkt.frames:
            n = samples_of(f)
            if n <= 0:
                self.counters["frames_bad"] += 1
                continue
            self.frame_samples = n
            if pos + n <= self.next_pos:
                self.counters["frames_late"] += 1
            elif pos not in self.frames:
                self.frames[pos] = f
            pos += n
        if pos <= self.next_pos:
            self.counters["packets_late"] += 1

    def wanted_target(self) -> float:
        if not self._transits:
            return self.target
        spread = sorted(self._transits)
        p95 = spread[min(len(spread) - 1, int(len(spread) * 0.95))]
        return max(self.min_s, min(self.max_s, p95 + 2 * self.frame_samples / self.rate))

    def delay(self) -> float:
        """The delay in use: how long after its ideal arrival the next position plays."""
        if self.base is None or self.next_pos is None:
            return self.target
        return self.next_t - (self.base + self.next_pos / self.rate)

    def take(self) -> tuple[str, bytes | int]:
        """What plays at next_t: ("frame", opus) or ("conceal", samples). Advances next_pos/next_t."""
        assert self.next_pos is not None
        step = self.frame_samples
        want = self.wanted_target()
        d = self.delay()
        if d < want - step / self.rate and self.frames:
            self.counters["stretched"] += 1  # the link got worse: play one frame of concealment more
            self.next_t += step / self.rate
            return "conceal", step
        frame = self.frames.pop(self.next_pos, None)
        for old in [p for p in self.frames if p < self.next_pos]:  # overlapping leftovers: never played
            self.frames.pop(old)
        if frame is None:
            # a missing frame: concealed up to the next frame we do have (or one frame when none)
            ahead = [p for p in self.frames if p > self.next_pos]
            gap = min(min(ahead) - self.next_pos, step) if ahead else step
            self.counters["concealed"] += 1  # every frame of libopus PLC; `underrun`: the buffer had run dry
            if not ahead:
                self.counters["underrun"] += 1
            self.next_pos += gap
            self.next_t += gap / self.rate
            return "conceal", gap
        return "frame", frame

    def over_target(self) -> bool:
        """The delay is over the target by more than two frames: the player drops a quiet frame."""
        step = self.frame_samples / self.rate
        return self.delay() > self.wanted_target() + 2 * step and len(self.frames) > 2

    def skip(self, samples: int) -> None:
        """A decoded frame that is not played (silence while over target): the delay shrinks by it."""
        assert self.next_pos is not None
        self.counters["skipped"] += 1
        self.next_pos += samples

    def rebase(self, now: float) -> None:
        """Playing starts now: frames buffered before (during warm-up and chime) play from now on, and the
        extra delay is taken back in pauses (`over_target`, the player skips quiet frames)."""
        if self.next_pos is not None and self.next_t < now:
            self.next_t = now

    def advance(self, samples: int) -> None:
        """After a frame of `samples` was played."""
        assert self.next_pos is not None
        self.next_pos += samples
        self.next_t += samples / self.rate
