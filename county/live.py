"""The county side of a live broadcast (实时喊话): one session per speaker's WebSocket.

A session has a random id and a fresh Ed25519 key pair that lives only in this process's memory for the
session. The `broadcast.live` command (signed with the county key, QoS 1 like every command) gives the
boxes the public half; every audio packet is signed with the private half (agent/broadcast/live.py has the
packet format). Opus frames from the browser (WebCodecs, 20-60 ms; or, from a browser without AudioEncoder,
the packets county/webm.py or county/oggopus.py take out of its MediaRecorder stream: the same frames, and
`add_frame` reads each one's duration from its TOC, never from the container's timestamps, so both paths
give the same seq/pos numbering) are grouped into packets of at least
`PACKET_MS` (fewer MQTT messages and signatures per second; at 20 ms frames this adds 40 ms of delay) and
published QoS 0, not retained, on `{prefix}/live/{session}/audio` by the server's own audio connection
(`AudioPublisher`: QoS 0 needs no PUBACK wait, so it does not share the command publisher's).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.broadcast.live import MAX_FRAMES, audio_topic, encode_packet
from agent.opus import Decoder, OpusError
from county.console import BrokerSpec, ConsoleError, CountyClient
from county.oggopus import crc as ogg_crc

log = logging.getLogger("county.live")

PACKET_MS = 60
RATE = 48000
DEFAULT_MAX_S = 600
MAX_FRAME_BYTES = 4000
END_COPIES = 3  # the END packet goes out this often (QoS 0); the box counts the copies as duplicates
# the recording must fit a broadcast.play inline (push.MAX_AUDIO_BYTES, 2 MiB) with the Ogg pages around it
MAX_RECORDING_BYTES = 1_900_000


class LiveError(Exception):
    pass


@dataclass
class LiveSession:
    session: str
    cmd_id: str
    prefix: str
    rate: int = RATE
    channels: int = 1
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0
    pos: int = 0
    frames: list[bytes] = field(default_factory=list)
    pending_samples: int = 0
    started: float = field(default_factory=time.monotonic)
    bytes_sent: int = 0
    packets_sent: int = 0
    frames_in: int = 0
    frames_bad: int = 0
    recording: list[tuple[bytes, int]] = field(default_factory=list)  # (Opus frame, samples) for the fallback
    recorded_bytes: int = 0
    _decoder: Decoder | None = None

    @property
    def topic(self) -> str:
        return audio_topic(self.prefix, self.session)

    def public_key(self) -> str:
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def add_frame(self, frame: bytes) -> bytes | None:
        """One Opus frame from the browser; a signed packet once PACKET_MS are together, else None."""
        if self._decoder is None:
            self._decoder = Decoder(self.rate, self.channels)  # only to read each frame's duration
        self.frames_in += 1
        if not frame or len(frame) > MAX_FRAME_BYTES:
            self.frames_bad += 1
            return None
        try:
            n = self._decoder.samples_in(frame)
        except OpusError:
            self.frames_bad += 1
            return None
        self.frames.append(frame)
        self.pending_samples += n
        if self.recorded_bytes + len(frame) <= MAX_RECORDING_BYTES:
            self.recording.append((frame, n))
            self.recorded_bytes += len(frame)
        if self.pending_samples * 1000 >= PACKET_MS * self.rate or len(self.frames) >= MAX_FRAMES:
            return self.flush()
        return None

    def flush(self) -> bytes | None:
        if not self.frames:
            return None
        pkt = encode_packet(self.key, self.session, self.seq, self.pos, self.frames)
        self.seq += 1
        self.pos += self.pending_samples
        self.frames, self.pending_samples = [], 0
        self.packets_sent += 1
        self.bytes_sent += len(pkt)
        return pkt

    def end_packet(self) -> bytes:
        pkt = encode_packet(self.key, self.session, self.seq, self.pos, [], end=True)
        self.seq += 1
        return pkt

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None


def new_session_id() -> str:
    return "live-" + secrets.token_hex(10)


class AudioPublisher:
    """The server's QoS 0 connection for live audio (connected on first use, kept; paho reconnects)."""

    def __init__(self, mqtt_config: Any) -> None:
        self.mqtt = mqtt_config
        self._client: CountyClient | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> CountyClient:
        async with self._lock:
            if self._client is not None:
                return self._client
            cfg = self.mqtt
            password = None
            if cfg.password_file is not None:
                password = (await asyncio.to_thread(cfg.password_file.read_text, encoding="utf-8")).strip()
            errors = []
            for url in cfg.urls:
                spec = BrokerSpec.parse(url, ca=cfg.ca, cert=cfg.cert, client_key=cfg.key)
                if cfg.username is not None and spec.username is None:
                    import dataclasses

                    spec = dataclasses.replace(spec, username=cfg.username, password=password)
                client = CountyClient(spec, max_queued=1, client_id=f"{cfg.client_id}-live-{secrets.token_hex(4)}",
                                      name="live")
                client.client.max_queued_messages_set(2000)
                try:
                    await asyncio.to_thread(client.connect)
                except ConsoleError as exc:
                    errors.append(str(exc))
                    continue
                self._client = client
                return client
            raise LiveError("; ".join(errors) or "no broker URL")

    async def start(self) -> None:
        await self._connect()

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 0, not retained: handed to paho's queue, never waited for (a late packet is worthless)."""
        client = self._client
        if client is None:
            raise LiveError("the live audio connection is not open")
        client.client.publish(topic, payload, qos=0, retain=False)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)


# ------------------------------------------------------------------------------------- the recording
def _page(serial: int, seq: int, granule: int, packets: list[bytes], flags: int) -> bytes:
    lacing = bytearray()
    for p in packets:
        lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
    header = (b"OggS" + bytes([0, flags]) + struct.pack("<qIII", granule, serial, seq, 0) + bytes([len(lacing)])
              + bytes(lacing))
    page = bytearray(header + b"".join(packets))
    page[22:26] = struct.pack("<I", ogg_crc(page))
    return bytes(page)


def ogg_opus(frames: list[tuple[bytes, int]], rate: int = RATE, channels: int = 1) -> bytes:
    """An Ogg Opus file (RFC 7845) of the recorded frames, exactly as spoken (no re-encoding).

    Written here rather than by an ffmpeg child: the frames are already Opus, so muxing is about sixty
    lines of page framing (and its CRC), while ffmpeg would need them decoded and encoded again."""
    serial = secrets.randbits(32)
    pre_skip = 312
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, rate, 0, 0)
    vendor = b"village-edge live"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    out = [_page(serial, 0, 0, [head], 0x02), _page(serial, 1, 0, [tags], 0)]
    seq, granule = 2, pre_skip
    page: list[bytes] = []
    segments = 0
    for i, (frame, samples) in enumerate(frames):
        need = len(frame) // 255 + 1
        if page and (segments + need > 255 or len(page) >= 50):
            out.append(_page(serial, seq, granule, page, 0))
            seq, page, segments = seq + 1, [], 0
        page.append(frame)
        segments += need
        granule += samples * 48000 // rate
        if i == len(frames) - 1:
            out.append(_page(serial, seq, granule, page, 0x04))
    if not frames:
        out[-1] = _page(serial, 1, 0, [tags], 0x04)
    return b"".join(out)
