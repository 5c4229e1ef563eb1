"""What every wristband codec shares: the decoder Protocol, counters, the bounded skip log, a line framer.

Sans-I/O: no asyncio, serial, bleak or gpiozero here or in any codec module (tests/test_codec_purity.py).
A decoder takes whatever bytes the transport read, in any split, and returns the events of the frames it
completed. It never raises on input and never holds more than its named buffer limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

from drivers.wristband.events import WristbandEvent

CodecName = Literal["watch", "ingics", "nmea"]

SKIP_LOG_ENTRIES = 16  # how many skipped chunks a decoder keeps for diagnosis
SKIP_LOG_BYTES = 256  # each kept chunk is cut to this many bytes


class CodecError(ValueError):
    """A frame that cannot be decoded. Decoders catch it, count it and keep `raw`; it never leaves feed()."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


@dataclass(frozen=True, slots=True)
class Skipped:
    """One chunk of input a decoder threw away, and why (for `village agent status` and bug reports)."""

    reason: str  # "garbage", "oversize", "malformed: ...", "checksum", ...
    raw: bytes  # at most SKIP_LOG_BYTES of it
    size: int  # the chunk's real size


@dataclass(slots=True)
class CodecStats:
    frames: int = 0  # complete frames that decoded
    events: int = 0  # events returned
    skipped: int = 0  # chunks thrown away (garbage runs, malformed or oversize frames, bad checksums)
    skipped_bytes: int = 0
    oversize: int = 0  # frames longer than the decoder's limit
    malformed: int = 0  # framed, but the content made no sense
    checksum: int = 0  # NMEA only: checksum missing or wrong
    replies: int = 0  # answers the decoder produced (watch LK/AL/TKQ)
    last_skipped: deque[Skipped] = field(default_factory=lambda: deque(maxlen=SKIP_LOG_ENTRIES))

    def skip(self, reason: str, raw: bytes | bytearray, size: int | None = None) -> None:
        n = len(raw) if size is None else size
        self.skipped += 1
        self.skipped_bytes += n
        self.last_skipped.append(Skipped(reason, bytes(raw[:SKIP_LOG_BYTES]), n))

    def as_dict(self) -> dict[str, object]:
        """Counters for telemetry/status; the raw chunks are hex so they survive JSON."""
        return {
            "frames": self.frames,
            "events": self.events,
            "skipped": self.skipped,
            "skipped_bytes": self.skipped_bytes,
            "oversize": self.oversize,
            "malformed": self.malformed,
            "checksum": self.checksum,
            "replies": self.replies,
            "last_skipped": [{"reason": s.reason, "size": s.size, "hex": s.raw.hex()} for s in self.last_skipped],
        }


class GatewayCodec(Protocol):
    """What the transport reader and the wearables service need from any codec."""

    stats: CodecStats

    def feed(self, data: bytes) -> list[WristbandEvent]:
        """Events of every frame completed by `data`; partial frames wait for the next feed. Never raises."""
        ...

    def reply(self, event: WristbandEvent) -> bytes | None:
        """Bytes to write back to the gateway for this event (a watch's LK/AL ack), or None."""
        ...

    def reset(self) -> None:
        """Forget a partial frame (the link dropped mid-frame); counters and per-tag memory stay."""
        ...


class LineFramer:
    """Splits a byte stream into `start`-prefixed lines ending in LF (CR stripped), within `max_line` bytes.

    Bytes before the start character are garbage: a run of them is recorded as one skipped chunk when the
    next line starts (or when the run fills a skip entry), so the counts do not depend on how the input was
    split. A line longer than `max_line` is dropped up to its LF and counted as oversize.
    Written by hand (not a regex over a buffer) because the bound and the skip accounting are the point.
    """

    def __init__(self, stats: CodecStats, *, start: int, max_line: int) -> None:
        self._stats = stats
        self._start = start
        self._max_line = max_line
        self._line = bytearray()  # the line being collected (starts with `start`)
        self._junk = bytearray()  # a garbage run being collected (kept up to SKIP_LOG_BYTES)
        self._junk_size = 0
        self._in_line = False
        self._discarding = False  # inside an oversize line, until its LF
        self._discard_head = b""
        self._discard_size = 0

    @property
    def buffered(self) -> int:
        return len(self._line) + len(self._junk)

    def reset(self) -> None:
        if self._in_line and self._line:
            self._stats.skip("truncated", self._line)
        self._flush_junk()
        self._line.clear()
        self._in_line = False
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        for byte in data:
            if self._discarding:
                if byte == 0x0A or byte == self._start:
                    self._discarding = False
                    self._stats.skip("oversize", self._discard_head, self._discard_size)
                    if byte == 0x0A:
                        continue
                else:
                    self._discard_size += 1
                    continue
            if not self._in_line:
                if byte == self._start:
                    self._flush_junk()
                    self._in_line = True
                    self._line.append(byte)
                elif byte not in (0x0A, 0x0D):  # stray line ends between lines are not garbage
                    self._junk_byte(byte)
                continue
            if byte == self._start:  # a new line began before this one ended: this one was cut short
                self._stats.skip("truncated", self._line)
                self._line.clear()
                self._line.append(byte)
                continue
            if byte == 0x0A:
                line = bytes(self._line).rstrip(b"\r")
                self._line.clear()
                self._in_line = False
                lines.append(line)
                continue
            self._line.append(byte)
            if len(self._line) > self._max_line:
                self._stats.oversize += 1
                self._discarding = True
                self._discard_head = bytes(self._line[:SKIP_LOG_BYTES])
                self._discard_size = len(self._line)
                self._line.clear()
                self._in_line = False
        return lines

    def _junk_byte(self, byte: int) -> None:
        if len(self._junk) < SKIP_LOG_BYTES:
            self._junk.append(byte)
        self._junk_size += 1
        if self._junk_size >= SKIP_LOG_BYTES:
            self._flush_junk()

    def _flush_junk(self) -> None:
        if self._junk_size:
            self._stats.skip("garbage", self._junk, self._junk_size)
            self._junk.clear()
            self._junk_size = 0


def make_decoder(codec: CodecName | str) -> GatewayCodec:
    """The decoder for a `[[gateway]] codec` value. Raises ValueError naming the choices for anything else."""
    # imported here so that this module stays the one place every codec module can import from
    from drivers.wristband.ingics import IngicsDecoder
    from drivers.wristband.nmea import NmeaDecoder
    from drivers.wristband.watch import WatchDecoder

    decoders: dict[str, type[GatewayCodec]] = {"watch": WatchDecoder, "ingics": IngicsDecoder, "nmea": NmeaDecoder}
    try:
        return decoders[codec]()
    except KeyError:
        raise ValueError(f"unknown gateway codec {codec!r} (one of: {', '.join(sorted(decoders))})") from None
