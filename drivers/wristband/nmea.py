"""NMEA 0183 GGA and RMC from a gateway's GNSS receiver -> GatewayFix, sans-I/O. Checksum enforced.

`$<talker><type>,...*HH` CRLF; talker is any two letters (GP, GN, GL, BD, GB, GA). A sentence without a
checksum, or with a wrong one, is dropped and counted (`stats.checksum`): a wired GNSS line that flips bits
must not move the box's own position. Other sentence types (GSV, GSA, VTG, TXT, ...) are valid input that
carries nothing we use: counted as frames, no event.

GGA has the time of day but no date: its fix_ts uses the date of the last RMC seen, else stays None.
RMC has no HDOP: its acc_m uses the last GGA's HDOP, else stays None. Accuracy = HDOP x HDOP_TO_M.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from drivers.wristband.codec import CodecError, CodecStats, LineFramer
from drivers.wristband.events import Fix, FixSource, GatewayFix, WristbandEvent

MAX_LINE_BYTES = 120  # the standard says 82 including CRLF; some receivers run longer proprietary lines
HDOP_TO_M = 5.0  # accuracy estimate: HDOP x ~5 m (a typical receiver's UERE)
KNOTS_TO_KMH = 1.852


def checksum(body: bytes) -> int:
    """XOR of the bytes between `$` and `*`."""
    x = 0
    for b in body:
        x ^= b
    return x


def encode_sentence(body: str) -> bytes:
    """`$body*HH\\r\\n` with its checksum (body without the `$`)."""
    raw = body.encode("ascii")
    return b"$" + raw + f"*{checksum(raw):02X}\r\n".encode()


def encode_gga(
    lat: float,
    lon: float,
    *,
    when: datetime,
    sats: int = 8,
    hdop: float = 1.0,
    alt_m: float = 0.0,
    quality: int = 1,
    talker: str = "GP",
) -> bytes:
    return encode_sentence(
        f"{talker}GGA,{when:%H%M%S}.00,{_ddmm(lat, 2)},{'N' if lat >= 0 else 'S'},{_ddmm(lon, 3)},"
        f"{'E' if lon >= 0 else 'W'},{quality},{sats:02d},{hdop:.1f},{alt_m:.1f},M,0.0,M,,"
    )


def encode_rmc(
    lat: float,
    lon: float,
    *,
    when: datetime,
    valid: bool = True,
    speed_kmh: float = 0.0,
    course_deg: float = 0.0,
    talker: str = "GP",
) -> bytes:
    return encode_sentence(
        f"{talker}RMC,{when:%H%M%S}.00,{'A' if valid else 'V'},{_ddmm(lat, 2)},{'N' if lat >= 0 else 'S'},"
        f"{_ddmm(lon, 3)},{'E' if lon >= 0 else 'W'},{speed_kmh / KNOTS_TO_KMH:.2f},{course_deg:.1f},"
        f"{when:%d%m%y},,,A"
    )


class NmeaDecoder:
    """Sentences in, GatewayFixes out (one per valid GGA or RMC). Never raises; bounded buffer."""

    def __init__(self, *, max_line: int = MAX_LINE_BYTES) -> None:
        self.stats = CodecStats()
        self._lines = LineFramer(self.stats, start=ord("$"), max_line=max_line)
        self._date: date | None = None  # from the last RMC
        self._hdop: float | None = None  # from the last GGA
        self.nofix = 0  # sentences that said "no fix" (GGA quality 0, RMC status V)

    @property
    def buffered(self) -> int:
        return self._lines.buffered

    def reset(self) -> None:
        self._lines.reset()

    def reply(self, event: WristbandEvent) -> bytes | None:
        return None

    def feed(self, data: bytes) -> list[WristbandEvent]:
        events: list[WristbandEvent] = []
        for line in self._lines.feed(data):
            try:
                event = self.decode_sentence(line)
            except CodecError as e:
                if e.reason.startswith("checksum"):
                    self.stats.checksum += 1
                else:
                    self.stats.malformed += 1
                self.stats.skip(e.reason, line)
                continue
            self.stats.frames += 1
            if event is not None:
                self.stats.events += 1
                events.append(event)
        return events

    def decode_sentence(self, line: bytes) -> GatewayFix | None:
        """One sentence without its line end; None for sentences that carry no fix. Raises CodecError."""
        star = line.rfind(b"*")
        if star < 0 or len(line) - star != 3:
            raise CodecError("checksum missing", line)
        body = line[1:star]
        try:
            given = int(line[star + 1 :], 16)
        except ValueError:
            raise CodecError("checksum not hex", line) from None
        if given != checksum(body):
            raise CodecError("checksum mismatch", line)
        try:
            f = body.decode("ascii").split(",")
        except UnicodeDecodeError:
            raise CodecError("not ASCII", line) from None
        kind = f[0][2:] if len(f[0]) == 5 else ""
        if kind == "GGA":
            return self._gga(f, line)
        if kind == "RMC":
            return self._rmc(f, line)
        return None

    def _gga(self, f: list[str], line: bytes) -> GatewayFix | None:
        if len(f) < 10:
            raise CodecError("GGA needs 14 fields", line)
        hdop = _float(f[8])
        if hdop is not None and hdop > 0:
            self._hdop = hdop
        if f[6] in ("", "0"):
            self.nofix += 1
            return None
        lat, lon = _coord(f[2], f[3], 2, line), _coord(f[4], f[5], 3, line)
        tod = _time(f[1], line)
        fix_ts = datetime.combine(self._date, tod, UTC).timestamp() if self._date and tod else None
        sats = _float(f[7])
        fix = Fix(
            lat=lat,
            lon=lon,
            fix_ts=fix_ts,
            source=FixSource.GPS,
            acc_m=_acc(hdop),
            sats=int(sats) if sats is not None else None,
        )
        return GatewayFix(fix=fix, raw=line)

    def _rmc(self, f: list[str], line: bytes) -> GatewayFix | None:
        if len(f) < 10:
            raise CodecError("RMC needs 12 fields", line)
        day = _date(f[9], line)
        if day is not None:
            self._date = day
        if f[2] != "A":
            self.nofix += 1
            return None
        lat, lon = _coord(f[3], f[4], 2, line), _coord(f[5], f[6], 3, line)
        tod = _time(f[1], line)
        speed = _float(f[7])
        fix = Fix(
            lat=lat,
            lon=lon,
            fix_ts=datetime.combine(day, tod, UTC).timestamp() if day and tod else None,
            source=FixSource.GPS,
            acc_m=_acc(self._hdop),
            speed_kmh=speed * KNOTS_TO_KMH if speed is not None else None,
            course_deg=_float(f[8]),
        )
        return GatewayFix(fix=fix, raw=line)


def _acc(hdop: float | None) -> float | None:
    return hdop * HDOP_TO_M if hdop is not None and hdop > 0 else None


def _coord(value: str, hemi: str, deg_digits: int, line: bytes) -> float:
    """`ddmm.mmmm` / `dddmm.mmmm` and N/S/E/W -> signed decimal degrees."""
    limit = 90 if deg_digits == 2 else 180
    try:
        deg = int(value[:deg_digits])
        minutes = float(value[deg_digits:])
    except ValueError:
        raise CodecError(f"bad coordinate {value[:16]!r}", line) from None
    if hemi not in ("N", "S", "E", "W") or not 0 <= minutes < 60 or deg > limit or value[:1] in "+-":
        raise CodecError(f"bad coordinate {value[:16]!r}{hemi[:2]}", line)
    x = deg + minutes / 60
    if x > limit:
        raise CodecError(f"coordinate out of range {value[:16]!r}", line)
    return -x if hemi in ("S", "W") else x


def _ddmm(x: float, deg_digits: int) -> str:
    a = abs(x)
    deg = int(a)
    minutes = (a - deg) * 60
    return f"{deg:0{deg_digits}d}{minutes:07.4f}"


def _time(text: str, line: bytes) -> time | None:
    if not text:
        return None
    try:
        h, m, s = int(text[0:2]), int(text[2:4]), float(text[4:])
        return time(h, m, int(s), round((s % 1) * 1e6) % 1_000_000, tzinfo=None)
    except ValueError:
        raise CodecError(f"bad time {text[:12]!r}", line) from None


def _date(text: str, line: bytes) -> date | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%d%m%y").date()
    except ValueError:
        raise CodecError(f"bad date {text[:12]!r}", line) from None


def _float(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if x == x and abs(x) != float("inf") else None
