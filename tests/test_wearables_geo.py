"""geo.py: datum conversions against published pairs, and hand-written ray casting against shapely."""

from __future__ import annotations

import math

import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import Point as SPoint
from shapely.geometry import Polygon as SPolygon

from agent.wearables import geo

# (wgs lat, wgs lon, gcj lat, gcj lon): googollee/eviltransform's test vectors (Shanghai, Shenzhen, Beijing)
GCJ_PAIRS = [
    (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215),
    (22.543847, 113.912316, 22.540796131694766, 113.9171764808363),
    (39.911954, 116.377817, 39.91334545536069, 116.38404722455657),
    # wandergis/coordtransform's README example: wgs84togcj02(116.404, 39.915)
    (39.915, 116.404, 39.91640428150164, 116.41024449916938),
]
# (gcj lat, gcj lon, bd lat, bd lon): wandergis/coordtransform: gcj02tobd09(116.404, 39.915)
GCJ_BD_PAIRS = [(39.915, 116.404, 39.92133699351021, 116.41036949371029)]
# (bd lat, bd lon, gcj lat, gcj lon): wandergis/coordtransform: bd09togcj02(116.404, 39.915)
BD_GCJ_PAIRS = [(39.915, 116.404, 39.90865673957631, 116.39762729119315)]

china = st.tuples(st.floats(18.0, 53.0), st.floats(74.0, 134.0))


@pytest.mark.parametrize(("wlat", "wlon", "glat", "glon"), GCJ_PAIRS)
def test_wgs84_to_gcj02_matches_published_pairs(wlat: float, wlon: float, glat: float, glon: float) -> None:
    lat, lon = geo.wgs84_to_gcj02(wlat, wlon)
    assert lat == pytest.approx(glat, abs=1e-9)
    assert lon == pytest.approx(glon, abs=1e-9)


@pytest.mark.parametrize(("wlat", "wlon", "glat", "glon"), GCJ_PAIRS)
def test_gcj02_to_wgs84_inverts_published_pairs_to_a_millimetre(wlat: float, wlon: float, glat: float,
                                                                  glon: float) -> None:
    lat, lon = geo.gcj02_to_wgs84(glat, glon)
    assert geo.haversine_m(lat, lon, wlat, wlon) < 0.001


@pytest.mark.parametrize(("glat", "glon", "blat", "blon"), GCJ_BD_PAIRS)
def test_gcj02_to_bd09_matches_published_pair(glat: float, glon: float, blat: float, blon: float) -> None:
    lat, lon = geo.gcj02_to_bd09(glat, glon)
    assert (lat, lon) == (pytest.approx(blat, abs=1e-9), pytest.approx(blon, abs=1e-9))


@pytest.mark.parametrize(("blat", "blon", "glat", "glon"), BD_GCJ_PAIRS)
def test_bd09_to_gcj02_matches_published_pair(blat: float, blon: float, glat: float, glon: float) -> None:
    # the published inverse is a closed-form approximation (a few cm); ours is refined to the exact inverse
    lat, lon = geo.bd09_to_gcj02(blat, blon)
    assert geo.haversine_m(lat, lon, glat, glon) < 0.1


@settings(max_examples=300, deadline=None)
@given(china)
def test_gcj02_round_trip(p: tuple[float, float]) -> None:
    g = geo.wgs84_to_gcj02(*p)
    assert geo.haversine_m(*p, *g) > 1.0  # it really moved (hundreds of metres in China)
    w = geo.gcj02_to_wgs84(*g)
    assert geo.haversine_m(*p, *w) < 0.001


@settings(max_examples=300, deadline=None)
@given(china)
def test_bd09_round_trip(p: tuple[float, float]) -> None:
    b = geo.wgs84_to_bd09(*p)
    w = geo.bd09_to_wgs84(*b)
    assert geo.haversine_m(*p, *w) < 0.001
    g = geo.gcj02_to_bd09(*p)
    assert geo.haversine_m(*p, *geo.bd09_to_gcj02(*g)) < 0.001


def test_outside_china_nothing_moves() -> None:
    assert geo.wgs84_to_gcj02(48.85, 2.35) == (48.85, 2.35)
    assert geo.gcj02_to_wgs84(48.85, 2.35) == (48.85, 2.35)


def test_to_wgs84_names_the_bad_crs() -> None:
    with pytest.raises(geo.GeoError, match="unknown crs 'EPSG:3857'"):
        geo.to_wgs84("EPSG:3857", 22.0, 100.0)


def test_haversine_known_distances() -> None:
    assert geo.haversine_m(0, 0, 1, 0) == pytest.approx(111_195, rel=1e-3)
    assert geo.haversine_m(22.0, 100.8, 22.0, 100.8) == 0.0
    # Beijing to Shanghai, about 1068 km
    assert geo.haversine_m(39.9042, 116.4074, 31.2304, 121.4737) == pytest.approx(1_068_000, rel=0.01)


def test_local_frame_agrees_with_haversine_at_village_scale() -> None:
    f = geo.LocalFrame.around(22.0, 100.8)
    for dlat, dlon in ((0.01, 0.0), (0.0, 0.01), (0.02, -0.03), (-0.05, 0.05)):
        x, y = f.xy(22.0 + dlat, 100.8 + dlon)
        assert math.hypot(x, y) == pytest.approx(geo.haversine_m(22.0, 100.8, 22.0 + dlat, 100.8 + dlon), rel=2e-3)
        assert f.lat_lon(x, y) == (pytest.approx(22.0 + dlat), pytest.approx(100.8 + dlon))


# --- ray casting vs shapely -------------------------------------------------------------------------


@st.composite
def star_polygons(draw: st.DrawFn) -> tuple[list[tuple[float, float]], list[list[tuple[float, float]]]]:
    """Star-shaped simple polygons (vertices sorted by angle around a centre), with up to 2 small holes."""
    n = draw(st.integers(3, 24))
    cx, cy = draw(st.floats(-500, 500)), draw(st.floats(-500, 500))
    angles = sorted(draw(st.lists(st.floats(0, 2 * math.pi, exclude_max=True), min_size=n, max_size=n,
                                  unique=True)))
    radii = draw(st.lists(st.floats(20, 400), min_size=n, max_size=n))
    outer = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
    holes = []
    for _ in range(draw(st.integers(0, 2))):
        hx, hy = draw(st.floats(-0.3, 0.3)), draw(st.floats(-0.3, 0.3))
        hr = draw(st.floats(1, 15))
        c = (cx + hx * min(radii), cy + hy * min(radii))
        holes.append([(c[0] + hr * math.cos(k * 2 * math.pi / 6), c[1] + hr * math.sin(k * 2 * math.pi / 6))
                      for k in range(6)])
    return outer, holes


@settings(max_examples=400, deadline=None)
@given(star_polygons(), st.lists(st.tuples(st.floats(-1000, 1000), st.floats(-1000, 1000)), min_size=1,
                                 max_size=20))
def test_ray_casting_agrees_with_shapely(poly: tuple[list[tuple[float, float]], list[list[tuple[float, float]]]],
                                         points: list[tuple[float, float]]) -> None:
    outer, holes = poly
    shape = SPolygon(outer, holes)
    assume(shape.is_valid)
    for x, y in points:
        p = SPoint(x, y)
        dist = shape.exterior.distance(p) if not holes else shape.boundary.distance(p)
        if dist < 1e-6:
            continue  # on the boundary: either answer is right, and a margin covers it anyway
        assert geo.point_in_polygon(x, y, outer, holes) == shape.contains(p)
        expected = -dist if shape.contains(p) else dist
        assert geo.signed_distance(x, y, outer, holes) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_ray_casting_with_a_closed_ring_and_a_hole() -> None:
    outer = [(0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0), (0.0, 0.0)]  # closing point repeated
    hole = [(40.0, 40.0), (60.0, 40.0), (60.0, 60.0), (40.0, 60.0)]
    assert geo.point_in_polygon(10, 10, outer, [hole])
    assert not geo.point_in_polygon(50, 50, outer, [hole])  # in the hole is outside
    assert geo.signed_distance(50, 50, outer, [hole]) == pytest.approx(10.0)
    assert geo.signed_distance(30, 50, outer, [hole]) == pytest.approx(-10.0)
    assert geo.signed_distance(150, 50, outer, [hole]) == pytest.approx(50.0)
    assert shapely.Polygon(outer, [hole]).area == pytest.approx(9600.0)


def test_circle_signed_distance() -> None:
    lat, lon = 22.0, 100.8
    north_100m = lat + 100 / 111_195
    assert geo.circle_signed_distance(north_100m, lon, lat, lon, 50.0) == pytest.approx(50.0, abs=0.1)
    assert geo.circle_signed_distance(lat, lon, lat, lon, 50.0) == -50.0


def test_check_lat_lon_rejects_nonsense() -> None:
    for lat, lon in ((91.0, 0.0), (0.0, 181.0), (math.nan, 0.0), (0.0, math.inf)):
        with pytest.raises(geo.GeoError):
            geo.check_lat_lon(lat, lon)
