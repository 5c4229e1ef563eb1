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

    async def stream(self, pcm: bytes, publish: Callable[[bytes], object], *, end: bool = True,
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


# ------------------------------------------------------------------------------ command line: speak a file
def read_pcm(path: Path, rate: int = RATE) -> bytes:
    """Any audio file as 16-bit mono PCM at `rate` (ffmpeg decodes and resamples)."""
    import subprocess

    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(rate), "-"],
                         capture_output=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"cannot read {path}: {out.stderr.decode(errors='replace').strip()[-200:]}")
    return out.stdout


async def speak_file(broker: str, key_path: Path, kid: str, to: list[str], path: Path, *, cls: str = "emergency",
                     level: int = 2, title: str = "", prefix: str = "vc/v1", max_s: int = 600,
                     start_wait_s: float = 0.5) -> str:
    """A live session from a file, the way the county server runs one: `broadcast.live` signed with the county
    key (QoS 1 on each target's cmd topic), then the audio in real time as signed QoS 0 packets, then END.
    Returns the command id. Point `broker` at the broker the boxes use (in `village sim run`, the boxes reach
    it through the netem proxy, so its loss and delay apply to the audio)."""
    import base64
    import secrets
    import uuid

    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives import serialization
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.keys import load_private_key
    from agent.protocol import jws
    from county.console import BrokerSpec

    pcm = read_pcm(path)
    county_key = load_private_key(key_path)
    session = "live-" + secrets.token_hex(10)
    sender = LiveSender(session)
    raw = sender.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    now = int(time.time())
    cmd_id = str(uuid.uuid4())
    token = jws.sign({"v": 1, "id": cmd_id, "kind": "broadcast.live", "iat": now, "exp": now + 120, "to": to,
                      "data": {"session": session, "class": cls, "level": level, "title": title, "max_s": max_s,
                               "codec": {"name": "opus", "rate": RATE, "channels": 1},
                               "key": base64.urlsafe_b64encode(raw).decode().rstrip("=")}}, county_key, kid)
    spec = BrokerSpec.parse(broker)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"live-speaker-{secrets.token_hex(3)}")
    client.connect(spec.host, spec.port)
    client.loop_start()
    try:
        for target in to:
            scope, name = target.split(":", 1)
            topic = f"{prefix}/box/{name}/cmd" if scope == "box" else f"{prefix}/group/{name}/cmd"
            client.publish(topic, token, qos=1).wait_for_publish(10)
        await asyncio.sleep(start_wait_s)  # the boxes subscribe when they take the command (then buffer all)
        audio = f"{prefix}/live/{session}/audio"
        await sender.stream(pcm, lambda pkt: client.publish(audio, pkt, qos=0))
    finally:
        client.loop_stop()
        client.disconnect()
    return cmd_id


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sim.live_audio",
                                 description="Speak an audio file to boxes as a live broadcast (实时喊话).")
    ap.add_argument("file", type=Path)
    ap.add_argument("--broker", required=True, help="mqtt://host:port of the boxes' broker")
    ap.add_argument("--key", type=Path, required=True, help="the county's signing key (PEM)")
    ap.add_argument("--kid", required=True)
    ap.add_argument("--to", action="append", required=True, help="box:ID or group:NAME (repeatable)")
    ap.add_argument("--class", dest="cls", default="emergency", choices=["emergency", "daily", "drill"])
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    cmd = asyncio.run(speak_file(args.broker, args.key, args.kid, args.to, args.file, cls=args.cls, title=args.title))
    print(cmd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
