"""What every wristband codec emits, whatever the wire looked like.

The codecs (watch, ingics, nmea, BLE advertising) translate frames into these frozen records; the
agent's wearables logic consumes only these. `raw` keeps the frame as received, for the county.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class FixSource(StrEnum):
    GPS = "gps"  # a satellite fix the band marked valid ("A")
    LBS = "lbs"  # cell towers only: never moves fence state
    WIFI = "wifi"  # Wi-Fi access points only: never moves fence state
    NONE = "none"  # no position at all ("V" with 0,0 or empty fields)


class BandAlarm(StrEnum):
    SOS = "sos"
    BAND_REMOVED = "band_removed"
    FALL = "fall"
    LOW_BATTERY = "low_battery"
    FENCE_EXIT = "fence_exit"  # the band's own fence; informational, the box decides on its own fences
    FENCE_ENTER = "fence_enter"
    GENERAL = "general"  # an alarm frame with no bit set


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    fix_ts: float | None  # epoch s when the band took the fix, if the frame says
    source: FixSource
    acc_m: float | None = None  # reported accuracy (HDOP-derived or given), None when unknown
    speed_kmh: float | None = None
    course_deg: float | None = None
    sats: int | None = None

    @property
    def usable(self) -> bool:
        """Good enough to move geofence state: a valid satellite fix that is not the 0,0 placeholder."""
        return self.source is FixSource.GPS and not (abs(self.lat) < 1e-6 and abs(self.lon) < 1e-6)


@dataclass(frozen=True, slots=True)
class BandReport:
    """One frame from one band: a position report, a heartbeat, an alarm, or several at once."""

    device: str  # band id or BLE MAC as the gateway reports it
    fix: Fix | None = None
    alarms: frozenset[BandAlarm] = field(default_factory=frozenset)
    battery_pct: int | None = None
    press_count: int | None = None  # a button press counter, where the tag has one
    steps: int | None = None
    kind: str = ""  # the frame type as named on the wire: "UD", "AL", "LK", "GPRP", ...
    raw: bytes = b""
    # measurements some bands send in their own frames: ("spo2", 98.0), ("temp_c", 36.5), ("heart_rate", 72.0),
    # ("bp_high", 120.0), ("bp_low", 79.0); informational, not alarms
    vitals: tuple[tuple[str, float], ...] = ()
    rssi: int | None = None  # signal strength the gateway heard the tag at (BLE), dBm


@dataclass(frozen=True, slots=True)
class GatewayHeartbeat:
    """The gateway itself is alive (Ingics $HBRP, or any frame on a gateway that has no heartbeat)."""

    gateway: str
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class GatewayFix:
    """A position of the gateway itself (NMEA GGA/RMC, Ingics $GPSR)."""

    fix: Fix
    raw: bytes = b""


WristbandEvent = BandReport | GatewayHeartbeat | GatewayFix
