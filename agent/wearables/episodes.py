"""Alarm episodes, lost contact, low battery, position thinning and gateway health. Pure, clock injected.

Decisions (docs/wearables.md explains them):
- SOS / band removed / fall go out at once, whatever the position quality, with the frame's fix when
  it is usable, else the band's last good fix flagged `pos_stale` (pos null when there never was one).
- Repeats within `sos_fold_s` of the previous one fold into the open episode (no new alarm). A press
  counter that did not move is the same press resent, not a repeat. When an episode with repeats
  closes (quiet for `sos_fold_s`), one `alarm_episode` event carries the count. A press after the
  quiet gap is a new episode and a new alarm.
- Lost contact: no frame for report_interval_s x lost_contact_factor -> one `lost_contact` alarm,
  cleared by the next frame with a `contact_restored` event. Declared only when the band's gateway is
  up and has delivered other traffic after the band's deadline: a gateway that goes quiet as a whole is
  one `gateway` event ("silent"), never N lost_contact alarms. After a gateway recovers every band on it
  gets a fresh full interval before it can be declared lost.
- Low battery: one event per episode; re-armed when the battery is back at battery_rearm_pct.
- Positions: telemetry thinned by distance and time (see PositionRules).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.clock import Clock
from agent.protocol.envelope import MsgClass
from agent.wearables.geo import haversine_m
from agent.wearables.registry import Wearer
from drivers.wristband.events import BandAlarm, BandReport, Fix, FixSource

# band alarm -> (class, kind) on the uplink. GENERAL is an alarm frame with no bit we know: it still
# reaches a person, as an event, so an unknown firmware's SOS is not silently lost.
ALARM_KINDS: dict[BandAlarm, tuple[MsgClass, str]] = {
    BandAlarm.SOS: (MsgClass.ALARM, "sos"),
    BandAlarm.BAND_REMOVED: (MsgClass.ALARM, "band_removed"),
    BandAlarm.FALL: (MsgClass.ALARM, "fall"),
    BandAlarm.GENERAL: (MsgClass.EVENT, "band_alarm"),
}


@dataclass(frozen=True, slots=True)
class Out:
    """One uplink message to send."""

    cls: MsgClass
    kind: str
    data: dict[str, Any]
    ts_ms: int


@dataclass(frozen=True, slots=True)
class EpisodeRules:
    report_interval_s: float = 60.0
    lost_contact_factor: float = 3.0
    sos_fold_s: float = 120.0
    low_battery_pct: int = 20
    battery_rearm_pct: int = 40
    position_min_distance_m: float = 50.0
    position_min_interval_s: float = 30.0
    position_max_interval_s: float = 900.0


@dataclass(slots=True)
class _Episode:
    started_ts: float  # wall, for the summary
    last_mono: float
    last_ts: float
    presses: int = 1


@dataclass(slots=True)
class _Band:
    wearer: Wearer
    gateway: str | None = None
    last_seen_mono: float | None = None
    last_seen_ts: float | None = None
    window_from: float = 0.0  # monotonic start of the current lost-contact window
    lost: bool = False
    last_fix: Fix | None = None
    last_fix_ts: float | None = None  # wall time the last good fix arrived
    episodes: dict[BandAlarm, _Episode] = field(default_factory=dict)
    press_count: int | None = None
    battery_low: bool = False
    sent_pos: tuple[float, float, float] | None = None  # lat, lon, monotonic of the last position sent
    sent_coarse_mono: float | None = None


@dataclass(slots=True)
class _Gateway:
    id: str
    silent_s: float
    up: bool = True  # presumed up at start, like the transport reader: it reports only edges
    silent: bool = False
    last_rx_mono: float = 0.0


def pos_of(fix: Fix, rx_ts: float | None) -> dict[str, Any]:
    return {"lat": round(fix.lat, 7), "lon": round(fix.lon, 7),
            "fix_ts": int((fix.fix_ts if fix.fix_ts is not None else rx_ts or 0) * 1000),
            "acc_m": fix.acc_m, "source": fix.source.value}


def _has_coords(fix: Fix | None) -> bool:
    return fix is not None and fix.source is not FixSource.NONE and not (abs(fix.lat) < 1e-6 and abs(fix.lon) < 1e-6)


class Episodes:
    def __init__(self, rules: EpisodeRules, clock: Clock) -> None:
        self._rules = rules
        self._clock = clock
        self._bands: dict[str, _Band] = {}  # by wearer id
        self._gateways: dict[str, _Gateway] = {}
        self._started = clock.monotonic()

    # --- setup --------------------------------------------------------------------------------------

    def add_gateway(self, gateway: str, silent_s: float) -> None:
        self._gateways[gateway] = _Gateway(gateway, silent_s, last_rx_mono=self._clock.monotonic())

    def set_wearers(self, wearers: Iterable[Wearer]) -> None:
        """Track these wearers (even before their first frame: a band dead at boot is still missed)."""
        now = self._clock.monotonic()
        current = {w.id: w for w in wearers}
        for wid in list(self._bands):
            if wid not in current:
                del self._bands[wid]
        for wid, w in current.items():
            band = self._bands.get(wid)
            if band is None:
                self._bands[wid] = _Band(w, window_from=now)
            elif band.wearer.device != w.device:
                self._bands[wid] = _Band(w, window_from=now)  # another band: start afresh
            else:
                band.wearer = w

    def forget_alarm(self, wearer_id: str, kind: str) -> None:
        """The `kind` alarm just raised for this wearer could not be stored: drop its episode so the
        band's resend (it got no ack) raises the alarm again instead of folding into a lost one."""
        band = self._bands.get(wearer_id)
        if band is None:
            return
        for alarm, (_cls, k) in ALARM_KINDS.items():
            if k == kind:
                band.episodes.pop(alarm, None)

    def _band(self, wearer: Wearer) -> _Band:
        band = self._bands.get(wearer.id)
        if band is None:
            band = self._bands[wearer.id] = _Band(wearer, window_from=self._clock.monotonic())
        return band

    # --- inputs -------------------------------------------------------------------------------------

    def on_traffic(self, gateway: str) -> list[Out]:
        """Any frame from the gateway (a band's or its own heartbeat)."""
        g = self._gateways.get(gateway)
        if g is None:
            return []
        now = self._clock.monotonic()
        g.last_rx_mono = now
        if g.silent:
            g.silent = False
            self._grace(gateway, now)
            return [self._gateway_out(gateway, "up", "traffic resumed")]
        return []

    def on_gateway_state(self, gateway: str, up: bool, reason: str) -> list[Out]:
        g = self._gateways.get(gateway)
        if g is None:
            return []
        if g.up is up:
            return []
        now = self._clock.monotonic()
        g.up, g.silent = up, False
        if up:
            g.last_rx_mono = now
            self._grace(gateway, now)
        return [self._gateway_out(gateway, "up" if up else "down", reason)]

    def on_report(self, wearer: Wearer, gateway: str, report: BandReport) -> list[Out]:
        now, ts = self._clock.monotonic(), self._clock.time()
        band = self._band(wearer)
        out: list[Out] = []
        if band.lost:
            band.lost = False
            out.append(Out(MsgClass.EVENT, "contact_restored", {
                **self._who(band), "last_seen": _ms_opt(band.last_seen_ts), "gateway": gateway,
                "silent_s": None if band.last_seen_mono is None else round(now - band.last_seen_mono, 1),
            }, _ms(ts)))
        band.gateway = gateway
        band.last_seen_mono, band.last_seen_ts, band.window_from = now, ts, now
        fix = report.fix
        if fix is not None and fix.usable:
            band.last_fix, band.last_fix_ts = fix, ts
        out += self._alarms(band, report, now, ts)
        out += self._battery(band, report, ts)
        out += self._position(band, fix, now, ts)
        return out

    def tick(self) -> list[Out]:
        """Close quiet episodes, find silent gateways and lost bands. Call about once a second."""
        now, ts = self._clock.monotonic(), self._clock.time()
        out: list[Out] = []
        for g in self._gateways.values():
            if g.up and not g.silent and now - g.last_rx_mono >= g.silent_s:
                g.silent = True
                wearers = sorted(b.wearer.id for b in self._bands.values() if b.gateway == g.id)
                out.append(self._gateway_out(g.id, "silent", f"no frames for {round(now - g.last_rx_mono)} s",
                                             wearers=wearers))
        factor = self._rules.lost_contact_factor
        for band in self._bands.values():
            for alarm, ep in list(band.episodes.items()):
                if now - ep.last_mono >= self._rules.sos_fold_s:
                    del band.episodes[alarm]
                    if ep.presses > 1:
                        out.append(Out(MsgClass.EVENT, "alarm_episode", {
                            **self._who(band), "alarm": ALARM_KINDS[alarm][1], "count": ep.presses,
                            "first_ts": _ms(ep.started_ts), "last_ts": _ms(ep.last_ts)}, _ms(ts)))
            if band.lost:
                continue
            interval = band.wearer.report_interval_s or self._rules.report_interval_s
            deadline = band.window_from + interval * factor
            if now < deadline or not self._gateway_proves_silence(band.gateway, deadline):
                continue
            band.lost = True
            out.append(Out(MsgClass.ALARM, "lost_contact", {
                **self._who(band), "last_seen": _ms_opt(band.last_seen_ts), "gateway": band.gateway,
                "expected_interval_s": interval}, _ms(ts)))
        return out

    # --- rules --------------------------------------------------------------------------------------

    def _gateway_proves_silence(self, gateway: str | None, deadline: float) -> bool:
        """The band is late and its gateway demonstrably works: it delivered traffic after the deadline."""
        gws = [self._gateways[gateway]] if gateway in self._gateways else list(self._gateways.values())
        return any(g.up and not g.silent and g.last_rx_mono >= deadline for g in gws)

    def _grace(self, gateway: str, now: float) -> None:
        for band in self._bands.values():
            if band.gateway == gateway or band.gateway is None:
                band.window_from = max(band.window_from, now)

    def _alarms(self, band: _Band, report: BandReport, now: float, ts: float) -> list[Out]:
        kinds = [a for a in report.alarms if a in ALARM_KINDS]
        if report.press_count is not None:
            same_press = band.press_count is not None and report.press_count == band.press_count
            presses = 1
            if band.press_count is not None and report.press_count > band.press_count:
                presses = report.press_count - band.press_count
            band.press_count = report.press_count
            if same_press:
                kinds = [a for a in kinds if a is not BandAlarm.SOS]  # the same press, resent
        else:
            presses = 1
        out: list[Out] = []
        for alarm in sorted(kinds):
            ep = band.episodes.get(alarm)
            n = presses if alarm is BandAlarm.SOS else 1
            if ep is not None and now - ep.last_mono < self._rules.sos_fold_s:
                ep.presses += n
                ep.last_mono, ep.last_ts = now, ts
                continue
            band.episodes[alarm] = _Episode(ts, now, ts, n)
            cls, kind = ALARM_KINDS[alarm]
            out.append(Out(cls, kind, {**self._who(band), **self._position_fields(band, report.fix),
                                       "raw": report.raw.decode("utf-8", "backslashreplace")}, _ms(ts)))
        return out

    def _position_fields(self, band: _Band, fix: Fix | None) -> dict[str, Any]:
        if fix is not None and fix.usable:
            return {"pos": pos_of(fix, self._clock.time()), "pos_stale": False}
        fields: dict[str, Any] = {"pos": None, "pos_stale": True}
        if band.last_fix is not None:
            fields["pos"] = pos_of(band.last_fix, band.last_fix_ts)
        if _has_coords(fix):
            assert fix is not None
            fields["pos_coarse"] = pos_of(fix, self._clock.time())  # cell / Wi-Fi: hundreds of metres
        return fields

    def _battery(self, band: _Band, report: BandReport, ts: float) -> list[Out]:
        pct = report.battery_pct
        low = BandAlarm.LOW_BATTERY in report.alarms or (pct is not None and pct <= self._rules.low_battery_pct)
        if band.battery_low:
            if pct is not None and pct >= self._rules.battery_rearm_pct:
                band.battery_low = False
            return []
        if not low:
            return []
        band.battery_low = True
        return [Out(MsgClass.EVENT, "low_battery", {**self._who(band), "battery_pct": pct}, _ms(ts))]

    def _position(self, band: _Band, fix: Fix | None, now: float, ts: float) -> list[Out]:
        r = self._rules
        if fix is None or not _has_coords(fix):
            return []
        if fix.usable:
            if band.sent_pos is not None:
                lat, lon, at = band.sent_pos
                dt = now - at
                moved = haversine_m(lat, lon, fix.lat, fix.lon)
                if not ((moved >= r.position_min_distance_m and dt >= r.position_min_interval_s)
                        or dt >= r.position_max_interval_s):
                    return []
            band.sent_pos = (fix.lat, fix.lon, now)
        else:  # cell / Wi-Fi only: at most one per max interval, and only when no GPS went out meanwhile
            last = max((band.sent_pos[2] if band.sent_pos else -math.inf),
                       (band.sent_coarse_mono if band.sent_coarse_mono is not None else -math.inf))
            if now - last < r.position_max_interval_s:
                return []
            band.sent_coarse_mono = now
        return [Out(MsgClass.TELEMETRY, "position", {**self._who(band), "pos": pos_of(fix, ts)}, _ms(ts))]

    # --- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _who(band: _Band) -> dict[str, Any]:
        return {"wearer": band.wearer.id, "device": band.wearer.device}

    def _gateway_out(self, gateway: str, state: str, reason: str, **extra: Any) -> Out:
        return Out(MsgClass.EVENT, "gateway", {"gateway": gateway, "state": state, "reason": reason, **extra},
                   _ms(self._clock.time()))

    def last_fix(self, wearer: str) -> Fix | None:
        band = self._bands.get(wearer)
        return band.last_fix if band else None

    def is_lost(self, wearer: str) -> bool:
        band = self._bands.get(wearer)
        return bool(band and band.lost)


def _ms(ts: float) -> int:
    return int(ts * 1000)


def _ms_opt(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)
