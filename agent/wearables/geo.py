"""Geometry for geofences: datum conversions, distances, point-in-polygon and distance to a boundary.

Written by hand, on purpose: the geofence test runs for every fix of every wearer against each of its
fences (500 wearers x 20 fences on a Pi), the maths is a few lines, and shapely/GEOS would be a heavy
native dependency on the box for no gain. The tests use shapely as an oracle.

Conventions: every function takes (lat, lon) in degrees, in that order. GeoJSON's [lon, lat] order is
handled in fences.py only. Planar work is done in a local equirectangular frame in metres around a
reference point (`LocalFrame`); at village scale (< 20 km) its error is far below GPS noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EARTH_R_M = 6_371_008.8  # mean radius, for haversine and the local frame

# GCJ-02 ("Mars coordinates", 国测局坐标): the published obfuscation uses Krasovsky 1940 constants.
_GCJ_A = 6_378_245.0
_GCJ_EE = 0.00669342162296594323
_BD_X_PI = math.pi * 3000.0 / 180.0

Point = tuple[float, float]  # (x, y) metres in a LocalFrame
Ring = tuple[Point, ...]


class GeoError(ValueError):
    """A coordinate or shape that cannot be used (out of range, too few points, zero radius)."""


def check_lat_lon(lat: float, lon: float) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise GeoError(f"coordinate is not a finite number: {lat!r}, {lon!r}")
    if not -90.0 <= lat <= 90.0:
        raise GeoError(f"latitude out of range: {lat}")
    if not -180.0 <= lon <= 180.0:
        raise GeoError(f"longitude out of range: {lon}")


# ---------------------------------------------------------------------------------------------------
# datum conversions (WGS-84 <-> GCJ-02 <-> BD-09)


def out_of_china(lat: float, lon: float) -> bool:
    """GCJ-02 only shifts points inside this box; outside it the three datums are the same."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _gcj_delta(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 105.0, lat - 35.0
    xpi, ypi = x * math.pi, y * math.pi
    common = (20.0 * math.sin(6.0 * xpi) + 20.0 * math.sin(2.0 * xpi)) * 2.0 / 3.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x)) + common
    dlat += (20.0 * math.sin(ypi) + 40.0 * math.sin(ypi / 3.0)) * 2.0 / 3.0
    dlat += (160.0 * math.sin(ypi / 12.0) + 320.0 * math.sin(ypi / 30.0)) * 2.0 / 3.0
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x)) + common
    dlon += (20.0 * math.sin(xpi) + 40.0 * math.sin(xpi / 3.0)) * 2.0 / 3.0
    dlon += (150.0 * math.sin(xpi / 12.0) + 300.0 * math.sin(xpi / 30.0)) * 2.0 / 3.0
    rad = lat / 180.0 * math.pi
    magic = 1.0 - _GCJ_EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = dlat * 180.0 / ((_GCJ_A * (1.0 - _GCJ_EE)) / (magic * sqrt_magic) * math.pi)
    dlon = dlon * 180.0 / (_GCJ_A / sqrt_magic * math.cos(rad) * math.pi)
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    if out_of_china(lat, lon):
        return lat, lon
    dlat, dlon = _gcj_delta(lat, lon)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """Inverse of wgs84_to_gcj02 by fixed-point iteration (converges to < 1 mm in a few steps)."""
    if out_of_china(lat, lon):
        return lat, lon
    wlat, wlon = lat, lon
    for _ in range(20):
        glat, glon = wgs84_to_gcj02(wlat, wlon)
        elat, elon = glat - lat, glon - lon
        wlat, wlon = wlat - elat, wlon - elon
        if abs(elat) < 1e-10 and abs(elon) < 1e-10:
            break
    return wlat, wlon


def gcj02_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    z = math.hypot(lon, lat) + 0.00002 * math.sin(lat * _BD_X_PI)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * _BD_X_PI)
    return z * math.sin(theta) + 0.006, z * math.cos(theta) + 0.0065


def bd09_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """The published closed-form inverse (good to a few centimetres), refined to an exact inverse."""
    x, y = lon - 0.0065, lat - 0.006
    z = math.hypot(x, y) - 0.00002 * math.sin(y * _BD_X_PI)
    theta = math.atan2(y, x) - 0.000003 * math.cos(x * _BD_X_PI)
    glat, glon = z * math.sin(theta), z * math.cos(theta)
    for _ in range(5):
        blat, blon = gcj02_to_bd09(glat, glon)
        elat, elon = blat - lat, blon - lon
        glat, glon = glat - elat, glon - elon
        if abs(elat) < 1e-11 and abs(elon) < 1e-11:
            break
    return glat, glon


def wgs84_to_bd09(lat: float, lon: float) -> tuple[float, float]:
    return gcj02_to_bd09(*wgs84_to_gcj02(lat, lon))


def bd09_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    return gcj02_to_wgs84(*bd09_to_gcj02(lat, lon))


CRS_NAMES = ("WGS84", "GCJ02", "BD09")


def to_wgs84(crs: str, lat: float, lon: float) -> tuple[float, float]:
    """Convert a point drawn in `crs` (WGS84 / GCJ02 / BD09) to WGS-84."""
    if crs == "WGS84":
        return lat, lon
    if crs == "GCJ02":
        return gcj02_to_wgs84(lat, lon)
    if crs == "BD09":
        return bd09_to_wgs84(lat, lon)
    raise GeoError(f"unknown crs {crs!r} (one of {', '.join(CRS_NAMES)})")


# ---------------------------------------------------------------------------------------------------
# distances


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_R_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class LocalFrame:
    """Equirectangular projection around (lat0, lon0): metres east (x) and north (y)."""

    lat0: float
    lon0: float
    kx: float
    ky: float

    @classmethod
    def around(cls, lat0: float, lon0: float) -> LocalFrame:
        k = EARTH_R_M * math.pi / 180.0
        return cls(lat0, lon0, k * math.cos(math.radians(lat0)), k)

    def xy(self, lat: float, lon: float) -> Point:
        return (lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky

    def lat_lon(self, x: float, y: float) -> tuple[float, float]:
        return self.lat0 + y / self.ky, self.lon0 + x / self.kx


# ---------------------------------------------------------------------------------------------------
# planar predicates (metres)


def point_in_ring(x: float, y: float, ring: Sequence[Point]) -> bool:
    """Ray casting (crossing number, even-odd). `ring` may or may not repeat its first point."""
    inside = False
    n = len(ring)
    x1, y1 = ring[n - 1]
    for i in range(n):
        x2, y2 = ring[i]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
        x1, y1 = x2, y2
    return inside


def distance_to_ring(x: float, y: float, ring: Sequence[Point]) -> float:
    """Shortest distance from the point to the ring's edges."""
    best = math.inf
    n = len(ring)
    x1, y1 = ring[n - 1]
    for i in range(n):
        x2, y2 = ring[i]
        dx, dy = x2 - x1, y2 - y1
        len2 = dx * dx + dy * dy
        t = 0.0 if len2 == 0.0 else max(0.0, min(1.0, ((x - x1) * dx + (y - y1) * dy) / len2))
        ex, ey = x1 + t * dx - x, y1 + t * dy - y
        d2 = ex * ex + ey * ey
        if d2 < best:
            best = d2
        x1, y1 = x2, y2
    return math.sqrt(best)


def point_in_polygon(x: float, y: float, outer: Sequence[Point], holes: Sequence[Sequence[Point]] = ()) -> bool:
    """Inside the outer ring and in none of the holes (a point in a hole is outside)."""
    if not point_in_ring(x, y, outer):
        return False
    return not any(point_in_ring(x, y, h) for h in holes)


def signed_distance(x: float, y: float, outer: Sequence[Point], holes: Sequence[Sequence[Point]] = ()) -> float:
    """Distance to the polygon's boundary (outer ring and holes): negative inside, positive outside."""
    d = min([distance_to_ring(x, y, outer), *(distance_to_ring(x, y, h) for h in holes)])
    return -d if point_in_polygon(x, y, outer, holes) else d


def circle_signed_distance(lat: float, lon: float, c_lat: float, c_lon: float, radius_m: float) -> float:
    return haversine_m(lat, lon, c_lat, c_lon) - radius_m


def open_ring(points: Sequence[Point]) -> Ring:
    """Drop a repeated closing point; GeoJSON rings repeat it, the algorithms above don't need it."""
    pts = tuple(points)
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    return pts
