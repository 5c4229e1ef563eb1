"""`[[gateway]]`, `[[wearer]]` and `[wearables]` config sections (owned by the wearables feature).

Every default lives here (docs/wearables.md lists them with their reasons); call sites read attributes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.i18n import N_
from agent.schema import SchemaError, at_least_one, non_negative, percent, positive

if TYPE_CHECKING:
    from agent.config import Config
    from agent.profile import HardwareProfile

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BLE = re.compile(r"ble(:hci[0-9]{1,3})?")
# the URL handlers pyserial's serial_for_url knows (serial/urlhandler/protocol_*.py)
SERIAL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "hwgrep", "alt", "cp2110")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_id(value: str) -> str:
    """Gateway and wearer ids travel in topics, logs and file names: 1-64 of A-Z a-z 0-9 _ . -"""
    if not _ID.fullmatch(value):
        raise ValueError(N_("must be 1-64 characters of A-Z a-z 0-9 _ . - (got {value!r})", value=value))
    return value


def check_gateway_url(url: str) -> str:
    """`ble` / `ble:hciN`, a device path (`/dev/ttyUSB0`) or a pyserial URL (`socket://host:port`, ...)."""
    if _BLE.fullmatch(url):
        return url
    if not url.strip():
        raise ValueError(N_("is empty: give a device path (/dev/ttyUSB0), a pyserial URL (socket://host:port) or ble"))
    if _CONTROL.search(url) or url != url.strip():
        raise ValueError(N_("has spaces or control characters around or in it: {url!r}", url=url))
    if url.startswith("/"):
        return url
    scheme = _SCHEME.match(url)
    if scheme is None:
        raise ValueError(N_("{url!r} is neither a device path starting with / nor a URL like socket://host:port nor "
                            "ble / ble:hciN", url=url))
    if scheme.group(1) not in SERIAL_SCHEMES:
        raise ValueError(N_("unknown scheme {scheme!r} in {url!r}: one of {schemes}",
                            scheme=scheme.group(1), url=url, schemes=", ".join(SERIAL_SCHEMES)))
    return url


def _factor(value: float) -> float:
    if value < 1.0:
        raise ValueError(N_("must be >= 1 (a band is never late before its own interval), got {value}", value=value))
    return value


def is_ble_url(url: str) -> bool:
    return _BLE.fullmatch(url) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    id: str = field(metadata={"check": check_id})
    # a device path, a pyserial URL (socket://, rfc2217://, loop://, spy://...) or ble / ble:hciN (the box's
    # own radio, which yields Ingics $GPRP lines: codec must be "ingics"); checked in __post_init__ so that a
    # bad codec is reported as such first. Unset: the hardware profile's `serial.url` (the box model's wired
    # gateway port), filled in by `resolve_gateways` once the profile is known; an error if it has none
    url: str | None = None
    codec: Literal["watch", "ingics", "nmea"]
    # no frame at all from this gateway for this long (while its link is up) -> one `gateway` event
    # "silent"; its bands are then not reported lost one by one
    silent_s: float = field(default=300.0, metadata={"check": positive})

    def __post_init__(self) -> None:
        if self.url is None:
            return
        try:
            check_gateway_url(self.url)
        except ValueError as exc:
            raise SchemaError("url", str(exc)) from None
        if _BLE.fullmatch(self.url) and self.codec != "ingics":
            raise SchemaError("codec", N_('a {url!r} gateway yields Ingics $GPRP lines: codec must be "ingics", got '
                                          '{codec!r}', url=self.url, codec=self.codec))


def resolve_gateways(gateways: tuple[GatewayConfig, ...], serial_url: str | None,
                     profile: str) -> tuple[GatewayConfig, ...]:
    """Every `[[gateway]]` with its url: a gateway that gives none gets the profile's `serial.url`.

    SchemaError (key `gateway[i].url`) when a gateway has no url and the profile none either, or when two
    gateways end up on the same device (the second open would fail or split the frames between them).
    """
    out = []
    seen: dict[str, int] = {}
    for i, g in enumerate(gateways):
        url = g.url
        if url is None:
            if serial_url is None:
                raise SchemaError(f"gateway[{i}].url", N_(
                    "not set, and hardware profile {profile!r} has no serial.url to default to: give the gateway's "
                    "device (/dev/ttyUSB0, socket://host:port, ble)", profile=profile))
            try:
                check_gateway_url(serial_url)
                g = dataclasses.replace(g, url=serial_url)
            except (ValueError, SchemaError) as exc:
                raise SchemaError(f"gateway[{i}].url", N_("profile {profile!r} serial.url: {exc}",
                                                          profile=profile, exc=exc)) from None
            url = serial_url
        if url in seen:
            raise SchemaError(f"gateway[{i}].url", N_("{url!r} is already gateway[{seen}]'s device",
                                                      url=url, seen=seen[url]))
        seen[url] = i
        out.append(g)
    return tuple(out)


def with_gateway_urls(config: Config, profile: HardwareProfile, source: Path | str) -> Config:
    """`config` with every `[[gateway]]` url filled in from the profile (`village agent check` and `run`);
    ConfigError naming the key when that cannot be done."""
    from agent.config import ConfigError

    try:
        gateways = resolve_gateways(config.gateways, profile.serial.url, profile.name)
    except SchemaError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None
    return dataclasses.replace(config, gateways=gateways)


@dataclass(frozen=True, slots=True)
class WearerConfig:
    id: str = field(metadata={"check": check_id})
    device: str
    # how often the band reports when healthy; lost contact after report_interval_s x lost_contact_factor.
    # None = [wearables] report_interval_s
    report_interval_s: float | None = field(default=None, metadata={"check": positive})
    # fence ids (from fences_file or the county's geofence.set) this wearer must stay inside
    fences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WearablesConfig:
    # geofence exit: outside by >= max(margin_m, the fix's reported accuracy) ...
    margin_m: float = field(default=25.0, metadata={"check": non_negative})
    # ... for this many consecutive usable fixes ...
    exit_fixes: int = field(default=3, metadata={"check": at_least_one})
    # ... spanning at least this many seconds
    exit_s: float = field(default=30.0, metadata={"check": non_negative})
    # default expected report interval of a band (a [[wearer]] may override it)
    report_interval_s: float = field(default=60.0, metadata={"check": positive})
    # lost contact after report_interval_s x this factor without a frame
    lost_contact_factor: float = field(default=3.0, metadata={"check": _factor})
    # SOS / band removed / fall repeats within this quiet gap fold into one alarm episode
    sos_fold_s: float = field(default=120.0, metadata={"check": positive})
    # low battery: once per episode at or below low_battery_pct, re-armed at or above battery_rearm_pct
    low_battery_pct: int = field(default=20, metadata={"check": percent})
    battery_rearm_pct: int = field(default=40, metadata={"check": percent})
    # position telemetry thinning: send when moved >= position_min_distance_m and at least
    # position_min_interval_s since the last one, or after position_max_interval_s whatever the distance
    position_min_distance_m: float = field(default=50.0, metadata={"check": non_negative})
    position_min_interval_s: float = field(default=30.0, metadata={"check": non_negative})
    position_max_interval_s: float = field(default=900.0, metadata={"check": positive})
    # local fences (GeoJSON FeatureCollection) loaded at start; the county's geofence.set wins on same id
    fences_file: Path | None = None
    fences_crs: Literal["WGS84", "GCJ02", "BD09"] = "WGS84"
    # how often the monitor looks for lost contact, silent gateways and closed alarm episodes
    tick_s: float = field(default=1.0, metadata={"check": positive})
    file: str = "wearables.db"  # in [box] state_dir

    def __post_init__(self) -> None:
        if self.battery_rearm_pct < self.low_battery_pct:
            raise SchemaError("battery_rearm_pct", N_("must be >= low_battery_pct"))
        if self.position_max_interval_s < self.position_min_interval_s:
            raise SchemaError("position_max_interval_s", N_("must be >= position_min_interval_s"))
