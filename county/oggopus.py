"""A streaming Ogg Opus reader for live broadcast: Opus packets out of a browser's MediaRecorder stream.

Firefox's MediaRecorder can record `audio/ogg;codecs=opus`; its slices of the Ogg stream (RFC 3533 pages,
RFC 7845 Opus mapping) come every few tens of milliseconds. This reader takes the slices as they come and
returns the audio packets (after OpusHead and OpusTags), for the same signed packet path as WebCodecs
frames (county/live.py: positions from each packet's TOC).

Hand-written rather than a dependency, for the reasons county/webm.py gives: page framing, lacing and the
page CRC are some eighty lines, and county/live.py already writes Ogg Opus the same way. Untrusted input:
a page is at most 27 + 255 + 255*255 bytes by construction, a packet is bounded by MAX_PACKET, the CRC is
checked, one logical stream only; anything else raises DemuxError, which ends that session.
"""

from __future__ import annotations

import struct

from county.webm import DemuxError

MAX_PACKET = 1 << 16  # audio packets are <= 1275 bytes a frame, x 48 frames at most; OpusTags is skipped by then
MAX_TAGS = 1 << 20  # OpusTags may span pages; only counted, never kept beyond this


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if r & 0x80000000 else (r << 1) & 0xFFFFFFFF
        table.append(r)
    return table


_CRC = _crc_table()


def crc(data: bytes | bytearray | memoryview) -> int:
    c = 0
    for b in data:
        c = ((c << 8) & 0xFFFFFFFF) ^ _CRC[((c >> 24) & 0xFF) ^ b]
    return c


class OggOpusReader:
    """feed(slice) -> the Opus audio packets completed by it, in order. DemuxError on anything malformed."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._serial: int | None = None
        self._seq: int | None = None
        self._partial = bytearray()
        self._packets = 0  # packets of the stream so far (0: OpusHead, 1: OpusTags, then audio)
        self.channels = 0
        self.rate = 0
        self.bytes_in = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.bytes_in += len(data)
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        at = 0
        while len(buf) - at >= 27:
            if buf[at:at + 4] != b"OggS":
                raise DemuxError("not an Ogg page (no OggS capture pattern)")
            if buf[at + 4] != 0:
                raise DemuxError(f"Ogg version {buf[at + 4]}")
            flags = buf[at + 5]
            serial, seq, want = struct.unpack_from("<III", buf, at + 14)
            nseg = buf[at + 26]
            if len(buf) - at < 27 + nseg:
                break
            lacing = buf[at + 27:at + 27 + nseg]
            size = 27 + nseg + sum(lacing)
            if len(buf) - at < size:
                break
            page = bytearray(buf[at:at + size])
            page[22:26] = b"\0\0\0\0"
            if crc(page) != want:
                raise DemuxError("Ogg page CRC mismatch")
            if self._serial is None:
                if not flags & 0x02:
                    raise DemuxError("the Ogg stream does not begin with a BOS page")
                self._serial = serial
            elif serial != self._serial:
                raise DemuxError("more than one logical Ogg stream")
            if self._seq is not None and seq != self._seq + 1:
                raise DemuxError(f"Ogg page {seq} after {self._seq}: pages lost or reordered")
            self._seq = seq
            if flags & 0x01 and not self._partial:
                raise DemuxError("a continued Ogg packet with nothing to continue")
            if not flags & 0x01 and self._partial:
                raise DemuxError("an Ogg packet left unfinished")
            body = memoryview(page)[27 + nseg:]
            pos = 0
            for lace in lacing:
                self._partial += body[pos:pos + lace]
                pos += lace
                limit = MAX_TAGS if self._packets < 2 else MAX_PACKET
                if len(self._partial) > limit:
                    raise DemuxError(f"an Ogg packet over {limit} bytes")
                if lace < 255:
                    pkt = bytes(self._partial)
                    self._partial.clear()
                    audio = self._packet(pkt)
                    if audio is not None:
                        out.append(audio)
            at += size
        del buf[:at]
        return out

    def _packet(self, pkt: bytes) -> bytes | None:
        n = self._packets
        self._packets += 1
        if n == 0:
            if len(pkt) < 19 or not pkt.startswith(b"OpusHead"):
                raise DemuxError("the Ogg stream is not Opus (no OpusHead)")
            self.channels = pkt[9]
            self.rate = struct.unpack_from("<I", pkt, 12)[0]
            if pkt[8] >> 4 != 0 or not 1 <= self.channels <= 2:
                raise DemuxError("unsupported OpusHead (version or channels)")
            return None
        if n == 1:
            if not pkt.startswith(b"OpusTags"):
                raise DemuxError("OpusTags missing")
            return None
        if not pkt:
            raise DemuxError("empty Opus packet")
        return pkt
