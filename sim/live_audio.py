"""Live broadcast in the simulator and the tests: the speaker's side (a sender that encodes PCM with the same
libopus binding the box decodes with, signs packets as the county server does) and the loudspeaker twin
(`TwinPcmSink`: records every PCM chunk the box hands its output, with the time, for correlation).

Also the click train both the tests and bench/live.py use: short 2 kHz bursts at known times, found again
in the output by their envelope.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.broadcast.live import encode_packet
from agent.opus import Encoder

RATE = 48000


@dataclass
class TwinPcmSink:
    """The loudspeaker twin for live audio: `chunks` = [(monotonic time written, pcm)], per session."""

    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    sessions: list[list[tuple[float, bytes]]] = field(default_factory=list)
    rate: int = RATE
    volume: int | None = None
    is_open: bool = False

    async def open(self, rate: int, channels: int, volume: int) -> None:
        self.rate, self.volume, self.is_open = rate, volume, True
        self.chunks = []
        self.sessions.append(self.chunks)

    async def write(self, pcm: bytes) -> None:
        self.chunks.append((time.monotonic(), pcm))

    async def close(self) -> None:
        self.is_open = False

    def factory(self) -> Callable[[], TwinPcmSink]:
        return lambda: self

    def pcm(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def sample_times(self) -> list[tuple[int, float]]:
        """(first sample index, monotonic time) of every chunk: when a sample reached the speaker."""
        out, n = [], 0
        for t, c in self.chunks:
            out.append((n, t))
            n += len(c) // 2
        return out


def click_train(clicks: list[float], seconds: float, rate: int = RATE, *, freq: float = 2000.0,
                burst_s: float = 0.01, amplitude: int = 20000) -> bytes:
    """Mono s16le: silence with a `burst_s` tone burst at each time in `clicks`."""
    n = int(seconds * rate)
    samples = [0] * n
    burst = int(burst_s * rate)
    for c in clicks:
        start = int(c * rate)
        for i in range(burst):
            if start + i < n:
                samples[start + i] = int(amplitude * math.sin(2 * math.pi * freq * i / rate))
    return struct.pack(f"<{n}h", *samples)


def write_wav(path: Path, pcm: bytes, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def find_clicks(pcm: bytes, rate: int = RATE, *, threshold: int = 6000, gap_s: float = 0.15) -> list[float]:
    """Onset times (s from the start of `pcm`) of bursts louder than `threshold`, at least `gap_s` apart."""
    n = len(pcm) // 2
    samples = struct.unpack(f"<{n}h", pcm[:n * 2])
    out: list[float] = []
    last = -1e9
    for i, s in enumerate(samples):
        if abs(s) >= threshold and i - last >= gap_s * rate:
            out.append(i / rate)
            last = i
        elif abs(s) >= threshold:
            last = i
    return out


class LiveSender:
    """Opus-encodes PCM in `frame_ms` frames and yields signed packets of `per_packet` frames."""

    def __init__(self, session: str, key: Ed25519PrivateKey | None = None, *, rate: int = RATE, frame_ms: int = 20,
                 per_packet: int = 3, bitrate: int = 24000) -> None:
        self.session = session
        self.key = key or Ed25519PrivateKey.generate()
        self.rate, self.frame_ms, self.per_packet = rate, frame_ms, per_packet
        self.encoder = Encoder(rate, 1, bitrate=bitrate)
        self.seq = 0
        self.pos = 0

    @property
    def packet_s(self) -> float:
        return self.frame_ms * self.per_packet / 1000

    def packets(self, pcm: bytes) -> Iterator[bytes]:
        step = self.rate * self.frame_ms // 1000 * 2
        frames = [pcm[i:i + step] for i in range(0, len(pcm) - step + 1, step)]
        for i in range(0, len(frames), self.per_packet):
            group = frames[i:i + self.per_packet]
            opus = [self.encoder.encode(f) for f in group]
            pkt = encode_packet(self.key, self.session, self.seq, self.pos, opus)
            self.seq += 1
            self.pos += len(group) * step // 2
            yield pkt

    def end(self) -> bytes:
        pkt = encode_packet(self.key, self.session, self.seq, self.pos, [], end=True)
        self.seq += 1
        return pkt

    async def stream(self, pcm: bytes, publish: Callable[[bytes], None], *, end: bool = True,
                     on_packet: Callable[[int, bytes], bytes | None] | None = None) -> list[float]:
        """Publish in real time (one packet per packet_s, paced on the monotonic clock); the send times.
        `on_packet(i, pkt)` may replace a packet (None: not sent)."""
        t0 = time.monotonic()
        sent: list[float] = []
        for i, pkt in enumerate(self.packets(pcm)):
            due = t0 + (i + 1) * self.packet_s  # a packet exists only once its last frame was spoken
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            out = on_packet(i, pkt) if on_packet is not None else pkt
            sent.append(time.monotonic())
            if out is not None:
                publish(out)
        if end:
            publish(self.end())
        return sent
