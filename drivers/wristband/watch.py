"""The "watch" wristband protocol (3G/SG/ZJ/CS makers): `[MAKER*ID*LEN*CONTENT]`, sans-I/O.

Frames are found by their brackets; the 4-hex length field is unreliable in real frames and is not used.
ZJ bands insert a 4-hex index before the length (`[ZJ*ID*IDX*LEN*CONTENT]`); it is echoed in replies.
CONTENT is `TYPE,v1,v2,...`. Position types (UD, UD2, UD_LTE, UD3, WT, AL, AL_LTE, ALCUSTOMER1, ... as
Traccar groups them: startsWith UD or AL, or WT) carry:

    date(ddmmyy),time(hhmmss),A|V,lat,N|S|'',lon,E|W|'',speed_kmh,course,alt,sats,rssi,battery,steps,rolls,
    status(8 hex; 4 on old firmware),cell_count,[ta,mcc,mnc,(lac,cid,rssi)*n],wifi_count,(ssid,mac,rssi)*m,...

The status word's alarm bits follow Traccar's mapping (see STATUS_ALARMS). Bands resend LK and AL frames
until the server answers; `reply_for` builds the answer Traccar sends. Binary content (TK voice) is
escaped by the bands so a raw `[` or `]` never occurs inside a frame; a `[` before the closing `]` therefore
means the previous frame was cut short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from drivers.wristband.codec import SKIP_LOG_BYTES, CodecError, CodecStats
from drivers.wristband.events import BandAlarm, BandReport, Fix, FixSource, WristbandEvent

MAX_FRAME_BYTES = 2048  # a UD frame with 7 cells and 10 Wi-Fi APs is ~600 bytes; TK voice frames are skipped

# (bit, alarm) in the status word, Traccar's order. Bit 14 (power cut) and bit 4 (motion) are not alarms here.
STATUS_ALARMS: tuple[tuple[int, BandAlarm], ...] = (
    (0, BandAlarm.LOW_BATTERY),
    (1, BandAlarm.FENCE_EXIT),
    (2, BandAlarm.FENCE_ENTER),
    (16, BandAlarm.SOS),
    (17, BandAlarm.LOW_BATTERY),
    (18, BandAlarm.FENCE_EXIT),
    (19, BandAlarm.FENCE_ENTER),
    (20, BandAlarm.BAND_REMOVED),
    (21, BandAlarm.FALL),
    (22, BandAlarm.FALL),
)

_MAKER = re.compile(r"[A-Z0-9]{2,4}")
_DEVICE = re.compile(r"[0-9A-Za-z]{1,32}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}")
_HEX_STATUS = re.compile(r"[0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}")


@dataclass(frozen=True, slots=True)
class WatchFrame:
    maker: str  # "3G", "SG", "ZJ", "CS", ...
    device: str
    index: str | None  # ZJ's extra 4-hex field, echoed in replies
    kind: str  # "UD", "AL_LTE", "LK", ...
    values: tuple[str, ...]
    raw: bytes


def parse_frame(raw: bytes) -> WatchFrame:
    """Split one bracketed frame into its header and values. Raises CodecError naming what is wrong."""
    if len(raw) < 2 or raw[:1] != b"[" or raw[-1:] != b"]":
        raise CodecError("not a bracketed frame", raw)
    text = raw[1:-1].decode("utf-8", errors="replace")  # SSIDs may be UTF-8; binary content is not used
    parts = text.split("*", 3)
    if len(parts) < 4:
        raise CodecError("header needs MAKER*ID*LEN*CONTENT", raw)
    maker, device, field2, rest = parts
    if not _MAKER.fullmatch(maker):
        raise CodecError(f"bad maker {maker[:8]!r}", raw)
    if not _DEVICE.fullmatch(device):
        raise CodecError(f"bad device id {device[:40]!r}", raw)
    if not _HEX4.fullmatch(field2):
        raise CodecError(f"bad length/index field {field2[:8]!r}", raw)
    index = None
    head, star, tail = rest.partition("*")
    if star and _HEX4.fullmatch(head):  # [ZJ*ID*IDX*LEN*CONTENT]
        index, rest = field2, tail
    if not rest:
        raise CodecError("empty content", raw)
    kind, *values = rest.split(",")
    if not kind:
        raise CodecError("empty frame type", raw)
    return WatchFrame(maker, device, index, kind, tuple(values), raw)


def is_position_kind(kind: str) -> bool:
    return kind.startswith(("UD", "AL")) or kind == "WT"


def decode_frame(frame: WatchFrame) -> BandReport:
    """The report a parsed frame carries. Lenient by design: a garbled field drops that field, never the alarm."""
    if is_position_kind(frame.kind):
        return _decode_position(frame)
    values = frame.values
    if frame.kind == "LK":
        # LK,steps,rolls,battery (needs all three, as Traccar does; "LK,0,100" is ambiguous and ignored)
        if len(values) >= 3:
            return BandReport(
                frame.device, battery_pct=_percent(values[2]), steps=_int(values[0]), kind="LK", raw=frame.raw
            )
        return BandReport(frame.device, kind="LK", raw=frame.raw)
    vitals = _vitals(frame.kind, values)
    return BandReport(frame.device, kind=frame.kind, raw=frame.raw, vitals=vitals)


def reply_for(frame: WatchFrame | bytes) -> bytes | None:
    """The answer a band waits for (LK, AL*, TKQ, TKQ2), as Traccar sends it; None for frames needing none."""
    if isinstance(frame, bytes | bytearray):
        try:
            frame = parse_frame(bytes(frame))
        except CodecError:
            return None
    if frame.kind in ("LK", "TKQ", "TKQ2"):
        content = frame.kind
    elif frame.kind.startswith("AL"):
        content = "AL"
    else:
        return None
    return encode_frame(frame.maker, frame.device, content, index=frame.index, upper=False)


def encode_frame(maker: str, device: str, content: str, *, index: str | None = None, upper: bool = True) -> bytes:
    """`[MAKER*ID*LEN*CONTENT]` with a correct length (hex of the content's byte length)."""
    body = content.encode("utf-8")
    length = f"{len(body):04X}" if upper else f"{len(body):04x}"
    head = f"[{maker}*{device}*" + (f"{index}*" if index is not None else "") + f"{length}*"
    return head.encode("ascii") + body + b"]"


@dataclass(frozen=True, slots=True)
class Cell:
    lac: int
    cid: int
    rssi: int


@dataclass(frozen=True, slots=True)
class WifiAp:
    ssid: str
    mac: str
    rssi: int


def encode_position(
    device: str,
    *,
    kind: str = "UD",
    maker: str = "3G",
    ts: float,
    lat: float,
    lon: float,
    valid: bool = True,
    speed_kmh: float = 0.0,
    course_deg: float = 0.0,
    alt_m: float = 0.0,
    sats: int = 0,
    rssi: int = 100,
    battery_pct: int = 100,
    steps: int = 0,
    rolls: int = 0,
    status: int = 0,
    old_status: bool = False,
    cells: tuple[Cell, ...] = (),
    mcc: int = 460,
    mnc: int = 0,
    wifi: tuple[WifiAp, ...] = (),
    index: str | None = None,
) -> bytes:
    """A band's position frame (UD, UD2, AL, ...), for the gateway twin. Hemispheres are written as letters."""
    when = datetime.fromtimestamp(ts, UTC)
    fields = [
        kind,
        when.strftime("%d%m%y"),
        when.strftime("%H%M%S"),
        "A" if valid else "V",
        f"{abs(lat):.6f}",
        "S" if lat < 0 else "N",
        f"{abs(lon):.7f}",
        "W" if lon < 0 else "E",
        f"{speed_kmh:.2f}",
        f"{course_deg:.1f}",
        f"{alt_m:.1f}",
        str(sats),
        str(rssi),
        str(battery_pct),
        str(steps),
        str(rolls),
        f"{status & 0xFFFF:04X}" if old_status else f"{status:08X}",
        str(len(cells)),
    ]
    if cells:
        fields += ["1", str(mcc), str(mnc)]
        for c in cells:
            fields += [str(c.lac), str(c.cid), str(c.rssi)]
    fields.append(str(len(wifi)))
    for ap in wifi:
        fields += [ap.ssid, ap.mac, str(ap.rssi)]
    return encode_frame(maker, device, ",".join(fields), index=index)


def encode_alarm(device: str, *, kind: str = "AL", **position: object) -> bytes:
    """An AL frame: a position frame whose status word carries the alarm bits (see STATUS_ALARMS)."""
    return encode_position(device, kind=kind, **position)  # type: ignore[arg-type]


def encode_lk(
    device: str,
    *,
    maker: str = "3G",
    steps: int | None = None,
    battery_pct: int | None = None,
    index: str | None = None,
) -> bytes:
    """A heartbeat: bare `LK`, or `LK,steps,rolls,battery`."""
    content = "LK" if battery_pct is None else f"LK,{steps or 0},0,{battery_pct}"
    return encode_frame(maker, device, content, index=index)


def status_bits(*alarms: BandAlarm) -> int:
    """The status word that carries these alarms (the first bit Traccar maps to each)."""
    word = 0
    for alarm in alarms:
        word |= 1 << next(bit for bit, a in STATUS_ALARMS if a is alarm and bit >= 16)
    return word


class WatchDecoder:
    """Feeds bytes, returns BandReports; answers LK/AL/TKQ via `reply`. Never raises; holds ≤ MAX_FRAME_BYTES."""

    def __init__(self, *, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.stats = CodecStats()
        self._max = max_frame
        self._frame = bytearray()  # from "[" up to, not including, the closing "]"
        self._junk = bytearray()
        self._junk_size = 0
        self._junk_text = False  # the run holds more than whitespace between frames
        self._discarding = False  # inside an oversize frame, until its "]" or the next "["
        self._discard_head = b""
        self._discard_size = 0

    @property
    def buffered(self) -> int:
        return len(self._frame) + len(self._junk)

    def reset(self) -> None:
        if self._frame:
            self.stats.skip("truncated", self._frame)
            self._frame.clear()
        self._flush_junk()
        if self._discarding:
            self._end_discard()

    def reply(self, event: WristbandEvent) -> bytes | None:
        if not isinstance(event, BandReport) or not event.raw:
            return None
        answer = reply_for(event.raw)
        if answer is not None:
            self.stats.replies += 1
        return answer

    def feed(self, data: bytes) -> list[WristbandEvent]:
        events: list[WristbandEvent] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._discarding:
                pos = self._discard(data, pos)
            elif not self._frame:
                start = data.find(b"[", pos)
                self._junk_add(data[pos : n if start < 0 else start])
                if start < 0:
                    break
                self._flush_junk()
                self._frame.append(0x5B)
                pos = start + 1
            else:
                pos = self._collect(data, pos, events)
        return events

    def _collect(self, data: bytes, pos: int, events: list[WristbandEvent]) -> int:
        n = len(data)
        close = data.find(b"]", pos)
        reopen = data.find(b"[", pos, n if close < 0 else close)
        if reopen >= 0:  # a new frame began before this one ended: this one was cut short
            self._frame += data[pos : min(reopen, pos + self._max)]
            self.stats.skip("truncated", self._frame)
            self._frame = bytearray(b"[")
            return reopen + 1
        end = n if close < 0 else close
        if len(self._frame) + (end - pos) + 1 > self._max:
            self.stats.oversize += 1
            self._discard_head = bytes((self._frame + data[pos : pos + SKIP_LOG_BYTES])[:SKIP_LOG_BYTES])
            self._discard_size = len(self._frame) + (end - pos)
            self._frame.clear()
            if close < 0:
                self._discarding = True
                return n
            self._discard_size += 1
            self.stats.skip("oversize", self._discard_head, self._discard_size)
            return close + 1
        self._frame += data[pos:end]
        if close < 0:
            return n
        self._frame.append(0x5D)
        raw = bytes(self._frame)
        self._frame.clear()
        self._frame_done(raw, events)
        return close + 1

    def _frame_done(self, raw: bytes, events: list[WristbandEvent]) -> None:
        try:
            report = decode_frame(parse_frame(raw))
        except CodecError as e:
            self.stats.malformed += 1
            self.stats.skip(f"malformed: {e.reason}", raw)
            return
        self.stats.frames += 1
        self.stats.events += 1
        events.append(report)

    def _discard(self, data: bytes, pos: int) -> int:
        close, reopen = data.find(b"]", pos), data.find(b"[", pos)
        hits = [i for i in (close, reopen) if i >= 0]
        if not hits:
            self._discard_size += len(data) - pos
            return len(data)
        stop = min(hits)
        self._discard_size += stop - pos
        if stop == close:
            self._discard_size += 1
        self._end_discard()
        return stop + 1 if stop == close else stop

    def _end_discard(self) -> None:
        self._discarding = False
        self.stats.skip("oversize", self._discard_head, self._discard_size)

    def _junk_add(self, chunk: bytes) -> None:
        if not chunk:
            return
        room = SKIP_LOG_BYTES - len(self._junk)
        if room > 0:
            self._junk += chunk[:room]
        self._junk_size += len(chunk)
        if chunk.strip():
            self._junk_text = True

    def _flush_junk(self) -> None:
        # whitespace between frames (some gateways end frames with CRLF) is not garbage
        if self._junk_size and self._junk_text:
            self.stats.skip("garbage", self._junk, self._junk_size)
        self._junk.clear()
        self._junk_size = 0
        self._junk_text = False


def _decode_position(frame: WatchFrame) -> BandReport:
    v = frame.values
    status = _status(v[15]) if len(v) > 15 else None
    alarms = {a for bit, a in STATUS_ALARMS if status is not None and status >> bit & 1}
    if frame.kind.startswith("AL") and not alarms:
        alarms.add(BandAlarm.GENERAL)  # Traccar's fallback: an alarm frame is an alarm even with no bit
    cells, wifi = _network_counts(v)
    return BandReport(
        frame.device,
        fix=_fix(v, cells, wifi),
        alarms=frozenset(alarms),
        battery_pct=_percent(v[12]) if len(v) > 12 else None,
        steps=_int(v[13]) if len(v) > 13 else None,
        kind=frame.kind,
        raw=frame.raw,
    )


def _fix(v: tuple[str, ...], cells: int, wifi: int) -> Fix | None:
    if len(v) < 7:
        return None
    lat, lon = _float(v[3]), _float(v[5])
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    # the sign may sit in the number ("-33.48,N"); a hemisphere letter only ever makes it negative
    if v[4].strip().upper() == "S":
        lat = -abs(lat)
    if v[6].strip().upper() == "W":
        lon = -abs(lon)
    zero = abs(lat) < 1e-6 and abs(lon) < 1e-6
    if v[2].strip() == "A" and not zero:
        source = FixSource.GPS
    elif wifi:
        source = FixSource.WIFI
    elif cells:
        source = FixSource.LBS
    else:
        source = FixSource.NONE
    return Fix(
        lat=lat,
        lon=lon,
        fix_ts=_timestamp(v[0], v[1]),
        source=source,
        speed_kmh=_float(v[7]) if len(v) > 7 else None,
        course_deg=_float(v[8]) if len(v) > 8 else None,
        sats=_int(v[10]) if len(v) > 10 else None,
    )


def _network_counts(v: tuple[str, ...]) -> tuple[int, int]:
    """(cell towers, Wi-Fi APs) the frame lists after the status word, as Traccar reads them.

    `cells,[ta,mcc,mnc,(lac,cid,rssi)*cells],wifi,(ssid,mac,rssi)*wifi`: with no cells, firmware differs on
    whether ta/mcc/mnc follow, so an AP counts only when its MAC field looks like a MAC.
    """
    i = 16
    cells = _int(v[i]) if len(v) > i else None
    if not cells or cells < 0:
        cells, i = 0, i + 1
    else:
        i += 1 + 3 + 3 * cells  # count, ta, mcc, mnc, then lac,cid,rssi per cell
    declared = _int(v[i]) if len(v) > i else None
    macs = v[i + 2 : i + 2 + 3 * max(declared or 0, 0) : 3]
    return cells, sum(1 for mac in macs if _MAC.fullmatch(mac.strip()))


def _vitals(kind: str, v: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    nums = [_float(x) for x in v]
    if kind == "oxygen" and nums and nums[-1] is not None:
        return (("spo2", nums[-1]),)
    if kind in ("TEMP", "btemp2") and nums and nums[-1] is not None:
        return (("temp_c", nums[-1]),)
    if kind == "bphrt" and len(nums) >= 3:
        named = zip(("bp_high", "bp_low", "heart_rate"), nums[:3], strict=True)
        return tuple((k, x) for k, x in named if x is not None)
    if kind in ("PULSE", "heart", "hrtstart") and nums and nums[-1] is not None:
        return (("heart_rate", nums[-1]),)
    return ()


def _timestamp(date: str, time: str) -> float | None:
    try:
        when = datetime.strptime(date.strip() + time.strip(), "%d%m%y%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return when.timestamp()


def _status(text: str) -> int | None:
    text = text.strip()
    return int(text, 16) if _HEX_STATUS.fullmatch(text) else None


def _float(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if x == x and abs(x) != float("inf") else None


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _percent(text: str) -> int | None:
    x = _int(text)
    return x if x is not None and 0 <= x <= 100 else None
