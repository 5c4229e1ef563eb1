"""Scenario files (TOML) -> frozen dataclasses, validated once, through agent.schema's `build`.

A scenario says who lives in the simulated village and what happens when, in *scenario seconds* (time as
the village lives it; `--speed X` compresses it). sim/scenarios/README.md documents every key with an
example; unknown keys are errors, as in the agent's own config. Times and ids are cross-checked here, so
a scenario that names a wearer, camera or broadcast that does not exist fails before anything starts.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.i18n import N_
from agent.schema import SchemaError, build, non_negative, positive

ACTIONS = (
    "sos", "fall", "remove_band", "drain", "silence", "unsilence", "noise", "unplug", "replug",
    "camera", "link_down", "link_up", "link_shape", "link_stall", "power_cut", "broadcast", "cancel",
)
# what each action needs besides `t_s` and `do`
_NEEDS: dict[str, tuple[str, ...]] = {
    "sos": ("wearer",), "fall": ("wearer",), "remove_band": ("wearer",), "drain": ("wearer", "pct"),
    "silence": ("wearer",), "unsilence": ("wearer",), "camera": ("camera", "mode"), "link_down": ("for_s",),
    "link_stall": ("for_s",), "power_cut": ("for_s",), "broadcast": ("id", "text"), "cancel": ("id",),
}
EXPECT_KINDS_SPECIAL = ("no_loss", "relay_on", "relay_off", "link_fallback_311")
CAMERA_MODES = ("healthy", "unreachable", "hung", "unauthorized", "not_found", "slow", "flapping")


class ScenarioError(Exception):
    """A scenario file that cannot be run. `str()` names the file and the key."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(N_("{file}: {key}: {problem}", file=self.file, key=key, problem=problem) if key
                         else N_("{file}: {problem}", file=self.file, problem=problem))


def _latlon(value: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    if not value:
        raise ValueError(N_("needs at least one [lat, lon] point"))
    for p in value:
        if len(p) != 2 or not (-90 <= p[0] <= 90 and -180 <= p[1] <= 180):
            raise ValueError(N_("{p} is not [lat, lon]", p=list(p)))
    return value


def _speed(value: float) -> float:
    if not 0 < value <= 1000:
        raise ValueError(N_("must be in (0, 1000], got {value}", value=value))
    return value


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    description: str = ""
    seed: int = 1
    duration_s: float = field(default=600.0, metadata={"check": positive})
    speed: float = field(default=1.0, metadata={"check": _speed})  # --speed overrides
    ci_speed: float = field(default=10.0, metadata={"check": _speed})  # what CI runs it at
    tick_s: float = field(default=10.0, metadata={"check": positive})  # bands report every tick_s
    drain_s: float = field(default=60.0, metadata={"check": non_negative})  # after the end: backlog may drain


@dataclass(frozen=True, slots=True)
class BoxSpec:
    id: str = "sim-box-001"
    name: str = ""  # shown on the dashboard and in the summary beside the id
    groups: tuple[str, ...] = ("town-sim",)
    heartbeat_s: float = field(default=60.0, metadata={"check": positive})  # scenario seconds
    clock_offset_s: float = 0.0  # the agent's wall clock is this far off (VILLAGE_CLOCK_OFFSET_S)
    quiet_hours: tuple[str, ...] = ()
    exit_s: float = field(default=30.0, metadata={"check": non_negative})  # geofence exit dwell
    lost_contact_factor: float = field(default=3.0, metadata={"check": positive})
    camera_interval_s: float = field(default=30.0, metadata={"check": positive})
    log_level: Literal["debug", "info", "warning"] = "info"


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    codec: Literal["watch"] = "watch"  # the twin scenario wearers walk through (watch frames carry GPS)
    link: Literal["pty", "tcp"] = "pty"
    name: str = ""  # shown on the dashboard


@dataclass(frozen=True, slots=True)
class FenceSpec:
    id: str
    center: tuple[float, ...] | None = None  # [lat, lon] with radius_m: a circle
    radius_m: float | None = field(default=None, metadata={"check": positive})
    polygon: tuple[tuple[float, ...], ...] | None = field(default=None, metadata={"check": _latlon})  # [lat, lon]s
    geojson: str | None = None  # an inline GeoJSON geometry (lon, lat as GeoJSON says), e.g. from a GIS

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.center, self.polygon, self.geojson))
        if given != 1:
            raise SchemaError("", N_("fence {id!r}: give exactly one of center+radius_m, polygon, geojson", id=self.id))
        if self.center is not None and (self.radius_m is None or len(self.center) != 2):
            raise SchemaError("radius_m", N_("a circle needs center = [lat, lon] and radius_m"))
        if self.geojson is not None:
            try:
                geom = json.loads(self.geojson)
            except json.JSONDecodeError as exc:
                raise SchemaError("geojson", N_("not JSON: {exc}", exc=exc)) from None
            if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon", "Point"):
                raise SchemaError("geojson", N_("must be a GeoJSON Polygon, MultiPolygon or Point geometry"))

    def feature(self) -> dict[str, Any]:
        props: dict[str, Any] = {"id": self.id}
        if self.center is not None:
            geom: dict[str, Any] = {"type": "Point", "coordinates": [self.center[1], self.center[0]]}
            props["radius_m"] = self.radius_m
        elif self.polygon is not None:
            ring = [[p[1], p[0]] for p in self.polygon]
            if ring[0] != ring[-1]:
                ring.append(ring[0])
            geom = {"type": "Polygon", "coordinates": [ring]}
        else:
            assert self.geojson is not None
            geom = json.loads(self.geojson)
            if geom["type"] == "Point" and self.radius_m is not None:
                props["radius_m"] = self.radius_m
        return {"type": "Feature", "id": self.id, "properties": props, "geometry": geom}


@dataclass(frozen=True, slots=True)
class WearerSpec:
    id: str
    device: str
    path: tuple[tuple[float, ...], ...] = field(metadata={"check": _latlon})  # [lat, lon] waypoints, looped
    speed_m_s: float = field(default=1.0, metadata={"check": non_negative})
    jitter_m: float = field(default=5.0, metadata={"check": non_negative})
    battery_pct: int = 100
    fences: tuple[str, ...] = ()
    label: str = ""  # the display label on the dashboard and in the summary: a role, never a real name


@dataclass(frozen=True, slots=True)
class CameraSpec:
    id: str
    name: str = ""
    mode: str = "healthy"  # at the start; [[at]] do = "camera" changes it

    def __post_init__(self) -> None:
        if self.mode not in CAMERA_MODES:
            raise SchemaError("mode", N_("must be one of {choices}", choices=', '.join(CAMERA_MODES)))


@dataclass(frozen=True, slots=True)
class Action:
    t_s: float = field(metadata={"check": non_negative})
    do: str
    wearer: str | None = None
    camera: str | None = None
    mode: str | None = None
    pct: int | None = None
    for_s: float | None = field(default=None, metadata={"check": positive})
    latency_ms: float | None = field(default=None, metadata={"check": non_negative})
    jitter_ms: float | None = field(default=None, metadata={"check": non_negative})
    loss: float | None = field(default=None, metadata={"check": non_negative})
    how: Literal["blackhole", "reset"] = "blackhole"  # link_down: packets vanish, or connections are reset
    clock_offset_s: float | None = None  # power_cut: the box comes back with its clock this far off
    # broadcast / cancel
    id: str | None = None
    text: str | None = None
    title: str | None = None
    cls: Literal["emergency", "daily", "drill"] = field(default="daily", metadata={"key": "class"})
    level: int | None = None
    volume: int | None = None
    note: str = ""  # shown on the dashboard and in the timeline

    def __post_init__(self) -> None:
        if self.do not in ACTIONS:
            raise SchemaError("do", N_("unknown action {do!r} (known: {known})", do=self.do, known=', '.join(ACTIONS)))
        for need in _NEEDS.get(self.do, ()):
            if getattr(self, need) is None:
                raise SchemaError(need, N_("missing (required for do = {do!r})", do=self.do))
        if self.mode is not None and self.mode not in CAMERA_MODES:
            raise SchemaError("mode", N_("must be one of {choices}", choices=', '.join(CAMERA_MODES)))
        if self.loss is not None and self.loss >= 1:
            raise SchemaError("loss", N_("must be < 1"))

    def describe(self) -> str:
        parts = [self.do]
        for key in ("wearer", "camera", "mode", "pct", "for_s", "latency_ms", "loss", "id", "cls"):
            value = getattr(self, key)
            if value is not None and not (key == "cls" and self.do != "broadcast"):
                parts.append(f"{'class' if key == 'cls' else key}={value}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Expect:
    kind: str  # an envelope kind (sos, geofence_exit, camera, cmd...) or one of EXPECT_KINDS_SPECIAL
    wearer: str | None = None
    camera: str | None = None
    state: str | None = None  # camera state, receipt state
    cmd: str | None = None  # receipts: the broadcast/command id
    reason: str | None = None
    count: int | None = None  # exactly this many (de-duplicated by envelope id)
    min_count: int | None = None
    by_s: float | None = field(default=None, metadata={"check": non_negative})  # arrived by this scenario time
    note: str = ""

    def __post_init__(self) -> None:
        if self.count is None and self.min_count is None and self.kind not in ("no_loss", "link_fallback_311"):
            raise SchemaError("count", N_("give count (exactly) or min_count"))

    def describe(self) -> str:
        filters = [f"{k}={getattr(self, k)}" for k in ("wearer", "camera", "state", "cmd", "reason")
                   if getattr(self, k) is not None]
        n = f"count={self.count}" if self.count is not None else f"min_count={self.min_count}"
        by = f" by t={self.by_s:g}s" if self.by_s is not None else ""
        return f"{self.kind} {' '.join(filters)} {n if self.kind != 'no_loss' else ''}{by}".replace("  ", " ")


@dataclass(frozen=True, slots=True)
class Scenario:
    scenario: Meta
    box: BoxSpec = field(default_factory=BoxSpec)
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    fences: tuple[FenceSpec, ...] = field(default=(), metadata={"key": "fence"})
    wearers: tuple[WearerSpec, ...] = field(default=(), metadata={"key": "wearer"})
    cameras: tuple[CameraSpec, ...] = field(default=(), metadata={"key": "camera"})
    actions: tuple[Action, ...] = field(default=(), metadata={"key": "at"})
    expects: tuple[Expect, ...] = field(default=(), metadata={"key": "expect"})

    def __post_init__(self) -> None:
        for name, items in (("fence", self.fences), ("wearer", self.wearers), ("camera", self.cameras)):
            ids = [x.id for x in items]
            if len(ids) != len(set(ids)):
                raise SchemaError(name, N_("duplicate id"))
        fences = {f.id for f in self.fences}
        wearers = {w.id for w in self.wearers}
        cameras = {c.id for c in self.cameras}
        if len({w.device for w in self.wearers}) != len(self.wearers):
            raise SchemaError("wearer", N_("two wearers share a device"))
        for i, w in enumerate(self.wearers):
            if unknown := set(w.fences) - fences:
                raise SchemaError(f"wearer[{i}].fences", N_("no such fence: {ids}", ids=', '.join(sorted(unknown))))
        broadcasts: set[str] = set()
        for i, a in enumerate(self.actions):
            if a.wearer is not None and a.wearer not in wearers:
                raise SchemaError(f"at[{i}].wearer", N_("no such wearer {wearer!r}", wearer=a.wearer))
            if a.camera is not None and a.camera not in cameras:
                raise SchemaError(f"at[{i}].camera", N_("no such camera {camera!r}", camera=a.camera))
            if a.t_s > self.scenario.duration_s:
                raise SchemaError(f"at[{i}].t_s", N_("after the end (duration_s = {duration_s:g})",
                                                     duration_s=self.scenario.duration_s))
            if a.do == "broadcast":
                broadcasts.add(a.id or "")
            if a.do == "cancel" and a.id not in broadcasts:
                raise SchemaError(f"at[{i}].id", N_("cancels {id!r}, which no earlier broadcast pushed", id=a.id))
        if [a.t_s for a in self.actions] != sorted(a.t_s for a in self.actions):
            raise SchemaError("at", N_("actions must be in time order"))
        for i, e in enumerate(self.expects):
            if e.wearer is not None and e.wearer not in wearers:
                raise SchemaError(f"expect[{i}].wearer", N_("no such wearer {wearer!r}", wearer=e.wearer))
            if e.camera is not None and e.camera not in cameras:
                raise SchemaError(f"expect[{i}].camera", N_("no such camera {camera!r}", camera=e.camera))

    def geojson(self) -> dict[str, Any]:
        return {"type": "FeatureCollection", "features": [f.feature() for f in self.fences]}


def parse_scenario(raw: dict[str, Any], source: Path | str = "<scenario>") -> Scenario:
    try:
        return build(Scenario, raw)
    except SchemaError as exc:
        raise ScenarioError(source, exc.key, exc.problem) from None


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ScenarioError(path, "", N_("file does not exist")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(path, "", N_("cannot read: {exc}", exc=exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "", N_("not valid TOML: {exc}", exc=exc)) from None
    return parse_scenario(raw, path)


BUNDLED = Path(__file__).parent / "scenarios"


def bundled() -> list[Path]:
    return sorted(BUNDLED.glob("*.toml"))
