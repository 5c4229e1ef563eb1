"""WGS-84 <-> GCJ-02 for the county's map: what the web console shows on a GCJ-02 tile layer (高德/AMap).

Every coordinate the county stores is WGS-84 (positions from the boxes, the regions file, fences). A tile
layer drawn in GCJ-02 ("Mars coordinates", 国测局坐标) puts a WGS-84 point a few hundred metres off, so the
page shifts what it draws (`wgs84_to_gcj02`) and shifts what the user draws back (`gcj02_to_wgs84`) before
it is saved. The page does it in JavaScript (county/web/static/gcj02.js, the same formulas line for line);
tests/test_geo.py runs both on the same points and checks they agree, and checks both against published
reference pairs. The link a 网格员 taps to open a position in AMap carries GCJ-02 coordinates made here.

Written here rather than imported from agent/wearables/geo.py (which the boxes use for their fences, and
which tests/test_geo.py checks this agrees with): county/ imports only agent.protocol from the agent, so
the box's internals can change without the county server noticing. It is twenty lines of published
arithmetic; no library is worth a dependency for it.

Points are (lat, lon) in degrees, in that order (GeoJSON's [lon, lat] is turned around by the callers).
"""

from __future__ import annotations

import math

# the published obfuscation's constants (Krasovsky 1940 ellipsoid)
_A = 6_378_245.0
_EE = 0.00669342162296594323
INVERSE_STEPS = 30
INVERSE_TOLERANCE_DEG = 1e-10  # ~0.01 mm


def out_of_china(lat: float, lon: float) -> bool:
    """GCJ-02 shifts only points inside this box; outside it WGS-84 and GCJ-02 are the same."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _delta(lat: float, lon: float) -> tuple[float, float]:
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
    magic = 1.0 - _EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = dlat * 180.0 / ((_A * (1.0 - _EE)) / (magic * sqrt_magic) * math.pi)
    dlon = dlon * 180.0 / (_A / sqrt_magic * math.cos(rad) * math.pi)
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    if out_of_china(lat, lon):
        return lat, lon
    dlat, dlon = _delta(lat, lon)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """The exact inverse of `wgs84_to_gcj02` by fixed-point iteration (the one-step inverse that is often
    published is off by up to a couple of metres; a fence drawn on AMap must come back where it was)."""
    if out_of_china(lat, lon):
        return lat, lon
    wlat, wlon = lat, lon
    for _ in range(INVERSE_STEPS):
        glat, glon = wgs84_to_gcj02(wlat, wlon)
        elat, elon = glat - lat, glon - lon
        wlat, wlon = wlat - elat, wlon - elon
        if abs(elat) < INVERSE_TOLERANCE_DEG and abs(elon) < INVERSE_TOLERANCE_DEG:
            break
    return wlat, wlon


def amap_uri(lat: float, lon: float, name: str) -> str:
    """An https link that opens the WGS-84 point in AMap (the app on a phone, the web page elsewhere),
    shifted to GCJ-02 as AMap expects (`coordinate=gaode`)."""
    from urllib.parse import quote

    glat, glon = wgs84_to_gcj02(lat, lon)
    return (f"https://uri.amap.com/marker?position={glon:.6f},{glat:.6f}&name={quote(name, safe='')}"
            "&coordinate=gaode&callnative=1")


def geo_uri(lat: float, lon: float, label: str) -> str:
    """RFC 5870 `geo:` (WGS-84, what Android's map apps open), with a query label."""
    from urllib.parse import quote

    return f"geo:{lat:.6f},{lon:.6f}?q={lat:.6f},{lon:.6f}({quote(label, safe='')})"
