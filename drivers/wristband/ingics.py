"""Ingics-style BLE gateway lines (iGS01S and alikes, and our own local-radio path), sans-I/O.

One report per line, ending CRLF (a bare LF is accepted):

    $GPRP,<tag>,<gw>,<rssi>,<advhex>[,<ts>]      a tag's advertisement ("general purpose report")
    $RSPR,<tag>,<gw>,<rssi>,<advhex>[,<ts>]      a tag's scan response; decoded like GPRP
    $HBRP,<gw>[,<anything>...][,<ts>]            the gateway's heartbeat
    $GPSR,<gw>,<lat>,<lon>[,<hdop>][,<ts>]       the gateway's own position (decimal degrees, WGS-84)

<tag>/<gw> are MACs (12 hex, colons optional; reported as `AA:BB:CC:DD:EE:FF`) or, for <gw>, a name such
as `hci0`; <ts> is Unix seconds, optionally written `*<ts>` as Ingics' firmware does when NTP is on. The
GPRP/RSPR layout is Ingics' own; HBRP and GPSR fields beyond the gateway id are this project's choice
(documented in docs/wristbands-codecs.md), since their firmware varies.
"""

from __future__ import annotations

import re

from drivers.wristband.bleadv import AdvFormatError, normalize_mac, parse_adv
from drivers.wristband.codec import CodecError, CodecStats, LineFramer
from drivers.wristband.events import BandReport, Fix, FixSource, GatewayFix, GatewayHeartbeat, WristbandEvent
from drivers.wristband.tags import TagPresses, read_tag

MAX_LINE_BYTES = 640  # "$GPRP," + 2 MACs + rssi + 255 bytes of advertising data in hex + a timestamp
HDOP_TO_M = 5.0  # accuracy estimate: HDOP x ~5 m (a typical receiver's UERE)

_GW = re.compile(r"[0-9A-Za-z:_.-]{1,32}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")


def encode_gprp(tag: str, gateway: str, rssi: int, adv: bytes, *, ts: int | None = None, kind: str = "GPRP") -> bytes:
    tail = f",*{ts}" if ts is not None else ""
    return f"${kind},{tag.replace(':', '')},{gateway.replace(':', '')},{rssi},{adv.hex().upper()}{tail}\r\n".encode()


def encode_hbrp(gateway: str, *, ts: int | None = None) -> bytes:
    tail = f",*{ts}" if ts is not None else ""
    return f"$HBRP,{gateway.replace(':', '')}{tail}\r\n".encode()


def encode_gpsr(gateway: str, lat: float, lon: float, *, hdop: float | None = None, ts: int | None = None) -> bytes:
    fields = [f"$GPSR,{gateway.replace(':', '')},{lat:.6f},{lon:.6f}"]
    if hdop is not None:
        fields.append(f"{hdop:.1f}")
    if ts is not None:
        fields.append(f"*{ts}")
    return (",".join(fields) + "\r\n").encode()


class IngicsDecoder:
    """Lines in, BandReports (tags), GatewayHeartbeats and GatewayFixes out. Never raises; bounded buffer."""

    def __init__(self, *, max_line: int = MAX_LINE_BYTES) -> None:
        self.stats = CodecStats()
        self._lines = LineFramer(self.stats, start=ord("$"), max_line=max_line)
        self._presses = TagPresses()

    @property
    def buffered(self) -> int:
        return self._lines.buffered

    def reset(self) -> None:
        self._lines.reset()

    def reply(self, event: WristbandEvent) -> bytes | None:
        return None  # these gateways expect no answer

    def feed(self, data: bytes) -> list[WristbandEvent]:
        events: list[WristbandEvent] = []
        for line in self._lines.feed(data):
            try:
                event = self.decode_line(line)
            except CodecError as e:
                self.stats.malformed += 1
                self.stats.skip(f"malformed: {e.reason}", line)
                continue
            self.stats.frames += 1
            self.stats.events += 1
            events.append(event)
        return events

    def decode_line(self, line: bytes) -> WristbandEvent:
        """One line without its line end. Raises CodecError naming what is wrong."""
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise CodecError("not ASCII", line) from None
        fields = [f.strip() for f in text.split(",")]
        kind = fields[0][1:]
        if kind in ("GPRP", "RSPR"):
            return self._tag(kind, fields, line)
        if kind == "HBRP":
            return GatewayHeartbeat(gateway=_gateway(fields, line), raw=line)
        if kind == "GPSR":
            return self._gateway_fix(fields, line)
        raise CodecError(f"unknown report type {kind[:8]!r}", line)

    def _tag(self, kind: str, fields: list[str], line: bytes) -> BandReport:
        if len(fields) < 5:
            raise CodecError(f"{kind} needs tag,gateway,rssi,advhex", line)
        try:
            device = normalize_mac(fields[1])
        except ValueError as e:
            raise CodecError(str(e), line) from None
        _gateway(fields, line)
        rssi = _int(fields[3])
        if rssi is None or not -127 <= rssi <= 20:
            raise CodecError(f"bad rssi {fields[3][:8]!r}", line)
        if not _HEX.fullmatch(fields[4]):
            raise CodecError("advertising data is not hex", line)
        try:
            adv = parse_adv(bytes.fromhex(fields[4]))
        except AdvFormatError as e:
            # the tag was heard, which matters for lost contact; its payload is unreadable
            self.stats.malformed += 1
            self.stats.skip(f"malformed: {e.reason}", line)
            return BandReport(device, kind=kind, raw=line, rssi=rssi)
        reading = read_tag(adv)
        if reading is None:
            return BandReport(device, kind=kind, raw=line, rssi=rssi)
        return BandReport(
            device,
            alarms=self._presses.alarms(device, reading),
            battery_pct=reading.battery_pct,
            press_count=reading.press_count,
            kind=kind,
            raw=line,
            rssi=rssi,
        )

    def _gateway_fix(self, fields: list[str], line: bytes) -> GatewayFix:
        if len(fields) < 4:
            raise CodecError("GPSR needs gateway,lat,lon", line)
        _gateway(fields, line)
        lat, lon = _float(fields[2]), _float(fields[3])
        if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
            raise CodecError("GPSR position out of range", line)
        rest = fields[4:]
        ts = _ts(rest[-1]) if rest and rest[-1].startswith("*") else None
        if ts is not None:
            rest = rest[:-1]
        hdop = _float(rest[0]) if rest else None
        zero = abs(lat) < 1e-6 and abs(lon) < 1e-6
        fix = Fix(
            lat=lat,
            lon=lon,
            fix_ts=ts,
            source=FixSource.NONE if zero else FixSource.GPS,
            acc_m=hdop * HDOP_TO_M if hdop is not None and hdop > 0 else None,
        )
        return GatewayFix(fix=fix, raw=line)


def _gateway(fields: list[str], line: bytes) -> str:
    index = 1 if fields[0] in ("$HBRP", "$GPSR") else 2
    if len(fields) <= index or not _GW.fullmatch(fields[index]):
        raise CodecError("missing or bad gateway id", line)
    try:
        return normalize_mac(fields[index])
    except ValueError:
        return fields[index]  # a name, not a MAC (the local radio reports its adapter, e.g. "hci0")


def _ts(text: str) -> float | None:
    x = _int(text.lstrip("*"))
    return float(x) if x is not None and x > 0 else None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if x == x and abs(x) != float("inf") else None
