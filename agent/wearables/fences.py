"""Geofences from GeoJSON: a FeatureCollection in, frozen WGS-84 fences out, or a FenceError naming the feature.

A fence is a Polygon (holes allowed), a MultiPolygon, or a circle: a Point with `properties.radius_m`.
Its id is the Feature's `id` (or `properties.id`). Fences drawn on Chinese maps (GCJ-02 from AMap/Tencent,
BD-09 from Baidu) are converted to WGS-84 vertex by vertex at load time; fixes from the bands are WGS-84.

Optional `properties.schedule` gates notification, never state (see geofence.py):
    {"from": "22:00", "to": "06:00", "days": [1, 2, 3, 4, 5, 6, 7], "tz": "Asia/Shanghai"}
or a list of such windows. `days` are ISO weekdays (1 = Monday) of the day a window starts; a window whose
`to` is not after `from` runs over midnight.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.i18n import N_
from agent.wearables.geo import (
    CRS_NAMES,
    GeoError,
    LocalFrame,
    Ring,
    check_lat_lon,
    distance_to_ring,
    open_ring,
    point_in_ring,
    to_wgs84,
)

INSIDE, BAND, OUTSIDE = -1, 0, 1  # Fence.classify results: inside / outside by less than the margin / beyond it

DEFAULT_TZ = "Asia/Shanghai"
MAX_FENCES = 1000
MAX_VERTICES = 10_000  # per fence; a village fence has tens
_HHMM_RE = re.compile(r"[0-9]{1,2}:[0-9]{2}")


class FenceError(ValueError):
    """A fence document that cannot be used. `str()` names the feature and what is wrong."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}" if where else problem)


@dataclass(frozen=True, slots=True)
class Window:
    start_min: int  # minutes after local midnight
    end_min: int
    days: frozenset[int]  # ISO weekdays the window starts on


@dataclass(frozen=True, slots=True)
class Schedule:
    windows: tuple[Window, ...]
    tz: ZoneInfo

    def active(self, wall_ts: float) -> bool:
        local = datetime.fromtimestamp(wall_ts, self.tz)
        minute = local.hour * 60 + local.minute
        today = local.isoweekday()
        yesterday = 7 if today == 1 else today - 1
        for w in self.windows:
            if w.start_min < w.end_min:
                if today in w.days and w.start_min <= minute < w.end_min:
                    return True
            else:  # over midnight (or all day when start == end)
                if today in w.days and minute >= w.start_min:
                    return True
                if yesterday in w.days and minute < w.end_min:
                    return True
        return False


@dataclass(frozen=True, slots=True)
class _Poly:
    outer: Ring
    holes: tuple[Ring, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Fence:
    id: str
    name: str
    fingerprint: str  # changes when the shape changes (not the name or schedule): the fence is then new
    frame: LocalFrame
    polygons: tuple[_Poly, ...]  # empty for a circle
    radius_m: float | None  # a circle around frame's origin
    bbox: tuple[float, float, float, float]  # min x, min y, max x, max y in the frame (metres)
    schedule: Schedule | None = None

    def classify(self, lat: float, lon: float, margin_m: float) -> int:
        """INSIDE, OUTSIDE (beyond margin_m from the boundary) or BAND (outside, but closer than that)."""
        x = (lon - self.frame.lon0) * self.frame.kx
        y = (lat - self.frame.lat0) * self.frame.ky
        if self.radius_m is not None:
            d = math.sqrt(x * x + y * y) - self.radius_m
            return INSIDE if d <= 0.0 else (OUTSIDE if d >= margin_m else BAND)
        minx, miny, maxx, maxy = self.bbox
        # beyond the bounding box by the margin on one axis is beyond the shape by at least as much
        if x < minx - margin_m or x > maxx + margin_m or y < miny - margin_m or y > maxy + margin_m:
            return OUTSIDE
        for p in self.polygons:
            if point_in_ring(x, y, p.outer) and not any(point_in_ring(x, y, h) for h in p.holes):
                return INSIDE
        return OUTSIDE if self._boundary_distance(x, y) >= margin_m else BAND

    def signed_distance_m(self, lat: float, lon: float) -> float:
        """Metres to the boundary: negative inside, positive outside."""
        x, y = self.frame.xy(lat, lon)
        if self.radius_m is not None:
            return math.hypot(x, y) - self.radius_m
        d = self._boundary_distance(x, y)
        inside = any(point_in_ring(x, y, p.outer) and not any(point_in_ring(x, y, h) for h in p.holes)
                     for p in self.polygons)
        return -d if inside else d

    def _boundary_distance(self, x: float, y: float) -> float:
        return min(distance_to_ring(x, y, r) for p in self.polygons for r in (p.outer, *p.holes))


# ---------------------------------------------------------------------------------------------------
# loading


def _hhmm(value: Any, where: str) -> int:
    # ASCII digits only: str.isdigit() is also true for "²", which int() refuses with a bare ValueError
    if not isinstance(value, str) or not _HHMM_RE.fullmatch(value):
        raise FenceError(where, N_('expected "HH:MM", got {value!r}', value=value))
    h, m = value.split(":")
    if not (h.isdigit() and m.isdigit() and 0 <= int(h) <= 24 and 0 <= int(m) < 60) or int(h) * 60 + int(m) > 1440:
        raise FenceError(where, N_('expected "HH:MM", got {value!r}', value=value))
    return int(h) * 60 + int(m)


def parse_schedule(raw: Any, where: str) -> Schedule | None:
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        return None
    windows = []
    tz_name = DEFAULT_TZ
    for i, item in enumerate(items):
        w = f"{where}[{i}]" if isinstance(raw, list) else where
        if not isinstance(item, dict):
            raise FenceError(w, N_("a schedule window is an object with from/to"))
        unknown = set(item) - {"from", "to", "days", "tz"}
        if unknown:
            raise FenceError(w, N_("unknown key(s) {unknown}", unknown=sorted(unknown)))
        days = item.get("days", [1, 2, 3, 4, 5, 6, 7])
        if not isinstance(days, list) or not all(isinstance(d, int) and 1 <= d <= 7 for d in days):
            raise FenceError(f"{w}.days", N_("expected a list of ISO weekdays 1-7"))
        start, end = _hhmm(item.get("from"), f"{w}.from"), _hhmm(item.get("to"), f"{w}.to")
        windows.append(Window(start % 1440, end % 1440 if end != 1440 else 1440, frozenset(days)))
        tz_name = item.get("tz", tz_name)
    try:
        tz = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise FenceError(f"{where}.tz", N_("unknown time zone {tz_name!r}", tz_name=tz_name)) from None
    return Schedule(tuple(windows), tz)


def _position(value: Any, where: str, crs: str) -> tuple[float, float]:
    """A GeoJSON position [lon, lat(, alt)] in `crs` -> (lat, lon) WGS-84."""
    if (not isinstance(value, list) or len(value) < 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value[:2])):
        raise FenceError(where, N_("expected a position [lon, lat], got {value!r}", value=value))
    try:
        lon, lat = float(value[0]), float(value[1])  # OverflowError: a JSON integer with 400 digits
        check_lat_lon(lat, lon)
    except (GeoError, OverflowError) as exc:
        raise FenceError(where, str(exc)) from None
    return to_wgs84(crs, lat, lon)


def _ring(value: Any, where: str, crs: str) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise FenceError(where, N_("a ring is a list of positions"))
    pts = [_position(p, f"{where}[{i}]", crs) for i, p in enumerate(value)]
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if len(set(pts)) < 3:
        raise FenceError(where, N_("a ring needs at least 3 distinct positions"))
    return pts


def _polygon_rings(coords: Any, where: str, crs: str) -> list[list[tuple[float, float]]]:
    if not isinstance(coords, list) or not coords:
        raise FenceError(where, N_("a Polygon's coordinates are a non-empty list of rings"))
    return [_ring(r, f"{where}[{i}]", crs) for i, r in enumerate(coords)]


def _fingerprint(geometry: Any, radius: Any, crs: str) -> str:
    blob = json.dumps({"g": geometry, "r": radius, "crs": crs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fence(feature: Any, where: str, crs: str) -> Fence:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise FenceError(where, N_("expected a GeoJSON Feature"))
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise FenceError(f"{where}.properties", N_("expected an object"))
    fid = feature.get("id", props.get("id"))
    if isinstance(fid, bool) or not isinstance(fid, (str, int)) or str(fid) == "" or len(str(fid)) > 64:
        raise FenceError(where, N_("a fence needs an id (Feature.id or properties.id, 1-64 characters)"))
    fid = str(fid)
    where = f"{where} ({fid})"
    name = str(props.get("name", fid))
    geom = feature.get("geometry")
    if not isinstance(geom, dict):
        raise FenceError(f"{where}.geometry", N_("missing"))
    gtype, coords = geom.get("type"), geom.get("coordinates")
    schedule = parse_schedule(props.get("schedule"), f"{where}.properties.schedule")
    radius = props.get("radius_m")
    if gtype == "Point":
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 < radius <= 100_000:
            raise FenceError(f"{where}.properties.radius_m", N_("a circle (Point) needs radius_m > 0 (metres)"))
        lat, lon = _position(coords, f"{where}.geometry.coordinates", crs)
        r = float(radius)
        return Fence(fid, name, _fingerprint(geom, r, crs), LocalFrame.around(lat, lon), (), r,
                     (-r, -r, r, r), schedule)
    if gtype == "Polygon":
        parts = [_polygon_rings(coords, f"{where}.geometry.coordinates", crs)]
    elif gtype == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise FenceError(f"{where}.geometry.coordinates", N_("a MultiPolygon needs at least one polygon"))
        parts = [_polygon_rings(c, f"{where}.geometry.coordinates[{i}]", crs) for i, c in enumerate(coords)]
    else:
        raise FenceError(f"{where}.geometry", N_("unsupported type {gtype!r} (Polygon, MultiPolygon, Point+radius_m)",
                                                 gtype=gtype))
    all_pts = [p for rings in parts for ring in rings for p in ring]
    if len(all_pts) > MAX_VERTICES:
        raise FenceError(where, N_("more than {max_vertices} vertices", max_vertices=MAX_VERTICES))
    lat0 = sum(p[0] for p in all_pts) / len(all_pts)
    lon0 = sum(p[1] for p in all_pts) / len(all_pts)
    frame = LocalFrame.around(lat0, lon0)
    polys = []
    for rings in parts:
        xy = [open_ring([frame.xy(lat, lon) for lat, lon in ring]) for ring in rings]
        polys.append(_Poly(xy[0], tuple(xy[1:])))
    xs = [x for p in polys for x, _ in p.outer]
    ys = [y for p in polys for _, y in p.outer]
    return Fence(fid, name, _fingerprint(geom, None, crs), frame, tuple(polys), None,
                 (min(xs), min(ys), max(xs), max(ys)), schedule)


def load_fences(doc: Any, crs: str = "WGS84") -> dict[str, Fence]:
    """A GeoJSON FeatureCollection (already parsed) -> {fence id: Fence}, all in WGS-84."""
    if crs not in CRS_NAMES:
        raise FenceError("crs", N_("must be one of {value}, got {crs!r}", value=', '.join(CRS_NAMES), crs=crs))
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise FenceError("fences", N_("expected a GeoJSON FeatureCollection"))
    features = doc.get("features")
    if not isinstance(features, list):
        raise FenceError("fences.features", N_("expected a list"))
    if len(features) > MAX_FENCES:
        raise FenceError("fences.features", N_("more than {max_fences} fences", max_fences=MAX_FENCES))
    out: dict[str, Fence] = {}
    for i, feature in enumerate(features):
        fence = _fence(feature, f"fences.features[{i}]", crs)
        if fence.id in out:
            raise FenceError(f"fences.features[{i}]", N_("duplicate fence id {id!r}", id=fence.id))
        out[fence.id] = fence
    return out


def load_fences_file(path: Path, crs: str = "WGS84") -> dict[str, Fence]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FenceError(str(path), N_("file does not exist")) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FenceError(str(path), N_("not a readable GeoJSON file: {exc}", exc=exc)) from None
    try:
        return load_fences(doc, crs)
    except FenceError as exc:
        raise FenceError(f"{path}: {exc.where}", exc.problem) from None


def check_assign(raw: Any, known: Mapping[str, Fence]) -> dict[str, tuple[str, ...]]:
    """`assign` of geofence.set: {wearer id: [fence id, ...]}, every fence id known."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FenceError("assign", N_("expected an object {wearer: [fence ids]}"))
    out: dict[str, tuple[str, ...]] = {}
    for wearer, ids in raw.items():
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise FenceError(f"assign.{wearer}", N_("expected a list of fence ids"))
        missing = [i for i in ids if i not in known]
        if missing:
            raise FenceError(f"assign.{wearer}", N_("unknown fence id(s) {missing}", missing=missing))
        out[str(wearer)] = tuple(dict.fromkeys(ids))
    return out
