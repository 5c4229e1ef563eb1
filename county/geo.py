"""WGS-84 <-> GCJ-02 for the county's map: what the web console shows on a GCJ-02 tile layer (高德/AMap).

Every coordinate the county stores is WGS-84 (positions from the boxes, the regions file, fences). A tile
layer drawn in GCJ-02 ("Mars coordinates", 国测局坐标) puts a WGS-84 point a few hundred metres off, so the
page shifts what it draws (`wgs84_to_gcj02`) and shifts what the user draws back (`gcj02_to_wgs84`) before
it is saved. The page does it in JavaScript (county/web/static/gcj02.js, the same formulas line for line);
tests/test_geo.py runs both on the same points and checks they agree, and checks both against published
reference pairs. The link a 网格员 taps to open a position in AMap carries GCJ-02 coordinates made here.

The conversion itself is the box's (agent/wearables/geo.py, which the boxes use for their fences): one
implementation of the published arithmetic for box and county, so the two cannot drift.

Points are (lat, lon) in degrees, in that order (GeoJSON's [lon, lat] is turned around by the callers).
"""

from __future__ import annotations

from agent.wearables.geo import gcj02_to_wgs84, out_of_china, wgs84_to_gcj02

__all__ = ["amap_uri", "gcj02_to_wgs84", "geo_uri", "out_of_china", "wgs84_to_gcj02"]


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
