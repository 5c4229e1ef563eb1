"""A streaming WebM reader for live broadcast: Opus packets out of a browser's MediaRecorder stream.

Browsers without WebCodecs' AudioEncoder record the microphone with MediaRecorder (`audio/webm;codecs=opus`),
which hands over arbitrary slices of a WebM file every few tens of milliseconds. This reader takes those
slices as they come and returns the Opus packets of the (single) audio track, to go into the same signed
packet path as WebCodecs frames (county/live.py: positions from each packet's TOC, not from the container).

Hand-written rather than a dependency: what's needed is a tiny subset of EBML (element headers, SimpleBlock
and Block payloads, the CodecID) read incrementally, about a hundred lines; the Python Matroska libraries
read whole files and ffmpeg/PyAV would mean a child process or a heavy native wheel on the server for a
job that is framing only. Untrusted input: everything is bounded (an element that would be buffered may be
at most MAX_ELEMENT bytes, one skipped unread at most MAX_SKIP, element IDs at most 4 and sizes at most 8
bytes, unknown sizes only on Segment and Cluster), and anything else raises DemuxError, which ends that
session; the reader never blocks or grows without bound.

Layout read flat (the Matroska IDs of the children are distinct, so the masters need not be tracked):
EBML header (skipped; must come first), Segment and Cluster (entered, known or unknown size), Tracks,
TrackEntry and BlockGroup (entered), CodecID (read: must be A_OPUS), SimpleBlock / Block (the packets of
the first audio track seen), everything else skipped by size without being buffered.
"""

from __future__ import annotations

MAX_ELEMENT = 1 << 16  # a SimpleBlock of one Opus packet (<= 1275 bytes a frame) is far below this
# an element skipped unread (Info, Void, Cues, Tags...): a recorder's are small; a garbled size must not make
# the reader swallow the rest of the session silently
MAX_SKIP = 1 << 20
EBML_HEADER = 0x1A45DFA3
SEGMENT = 0x18538067
CLUSTER = 0x1F43B675
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
BLOCK_GROUP = 0xA0
TRACK_NUMBER = 0xD7
CODEC_ID = 0x86
SIMPLE_BLOCK = 0xA3
BLOCK = 0xA1
MASTERS = frozenset({SEGMENT, CLUSTER, TRACKS, TRACK_ENTRY, BLOCK_GROUP})
UNKNOWN_OK = frozenset({SEGMENT, CLUSTER})
READ = frozenset({TRACK_NUMBER, CODEC_ID, SIMPLE_BLOCK, BLOCK})


class DemuxError(ValueError):
    """The container stream is malformed or not what a live session may send (not Opus, too large...)."""


def _vint(buf: bytes | bytearray, at: int, max_len: int, keep_marker: bool) -> tuple[int, int, bool] | None:
    """(value, length, all-ones) of the EBML variable-length integer at `at`; None if more bytes are needed."""
    if at >= len(buf):
        return None
    first = buf[at]
    if first == 0:
        raise DemuxError("invalid EBML variable-length integer")
    length = 8 - first.bit_length() + 1
    if length > max_len:
        raise DemuxError(f"EBML integer of {length} bytes (at most {max_len})")
    if at + length > len(buf):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in buf[at + 1:at + length]:
        value = (value << 8) | b
    ones = (first & ((1 << (8 - length)) - 1)) == (1 << (8 - length)) - 1 and all(
        b == 0xFF for b in buf[at + 1:at + length])
    return value, length, ones


class WebmOpusReader:
    """feed(slice) -> the Opus packets completed by it, in order. DemuxError on anything malformed."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of a skipped element still to come
        self._started = False
        self._track: int | None = None  # the audio track's number (the first TrackNumber, or the first block's)
        self.codec: str | None = None
        self.bytes_in = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.bytes_in += len(data)
        out: list[bytes] = []
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self._buf += data
        buf = self._buf
        at = 0
        while at < len(buf):
            if self._skip:
                n = min(self._skip, len(buf) - at)
                self._skip -= n
                at += n
                continue
            ident = _vint(buf, at, 4, keep_marker=True)
            if ident is None:
                break
            eid, ilen, _ = ident
            size = _vint(buf, at + ilen, 8, keep_marker=False)
            if size is None:
                break
            length, slen, unknown = size
            if not self._started:
                if eid != EBML_HEADER:
                    raise DemuxError("not a WebM stream (no EBML header)")
                self._started = True
            head = ilen + slen
            if unknown and eid not in UNKNOWN_OK:
                raise DemuxError(f"element 0x{eid:X} of unknown size")
            if eid in MASTERS:
                at += head  # entered: its children follow
                continue
            if eid not in READ:
                if length > MAX_SKIP:
                    raise DemuxError(f"element 0x{eid:X} of {length} bytes (at most {MAX_SKIP})")
                at += head
                self._skip = length  # consumed from the buffer (or later data) without being kept
                continue
            if length > MAX_ELEMENT:
                raise DemuxError(f"element 0x{eid:X} of {length} bytes (at most {MAX_ELEMENT})")
            if at + head + length > len(buf):
                break
            body = bytes(buf[at + head:at + head + length])
            at += head + length
            if eid == CODEC_ID:
                self.codec = body.rstrip(b"\0").decode("ascii", "replace")
                if self.codec != "A_OPUS":
                    raise DemuxError(f"the WebM track is {self.codec[:20]!r}, not Opus")
            elif eid == TRACK_NUMBER:
                if self._track is None and body:
                    self._track = int.from_bytes(body, "big")
            else:
                out.extend(self._block(body))
        del buf[:at]
        if len(buf) > MAX_ELEMENT + 16:
            raise DemuxError("WebM element header never completes")
        return out

    def _block(self, body: bytes) -> list[bytes]:
        track = _vint(body, 0, 8, keep_marker=False)
        if track is None or len(body) < track[1] + 3:
            raise DemuxError("truncated WebM block")
        number, tlen, _ = track
        if self._track is None:
            self._track = number
        if number != self._track:
            return []  # another track (MediaRecorder writes only the audio one here)
        flags = body[tlen + 2]
        data = body[tlen + 3:]
        lacing = (flags >> 1) & 3
        if lacing == 0:
            frames = [data]
        elif lacing == 1:
            frames = _xiph(data)
        elif lacing == 2:
            frames = _fixed(data)
        else:
            raise DemuxError("EBML lacing is not supported")
        if any(not f for f in frames):
            raise DemuxError("empty Opus packet in a WebM block")
        return frames


def _xiph(data: bytes) -> list[bytes]:
    if not data:
        raise DemuxError("truncated laced block")
    count = data[0] + 1
    at, sizes = 1, []
    for _ in range(count - 1):
        size = 0
        while True:
            if at >= len(data):
                raise DemuxError("truncated lacing")
            b = data[at]
            at += 1
            size += b
            if b != 255:
                break
        sizes.append(size)
    rest = len(data) - at - sum(sizes)
    if rest < 0:
        raise DemuxError("laced sizes exceed the block")
    sizes.append(rest)
    out = []
    for s in sizes:
        out.append(data[at:at + s])
        at += s
    return out


def _fixed(data: bytes) -> list[bytes]:
    if not data:
        raise DemuxError("truncated laced block")
    count = data[0] + 1
    body = data[1:]
    if len(body) % count:
        raise DemuxError("fixed lacing does not divide the block")
    n = len(body) // count
    return [body[i * n:(i + 1) * n] for i in range(count)]
