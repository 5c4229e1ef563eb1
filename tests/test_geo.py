"""county/geo.py (WGS-84 <-> GCJ-02 for the web map) against published reference pairs, its round trip, the box's
own conversion (agent/wearables/geo.py), and the browser's copy (county/web/static/js/gcj02.js) run in a real
headless Chromium on the same points."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.wearables import geo as box_geo
from county import geo

# (wgs lat, wgs lon, gcj lat, gcj lon): googollee/eviltransform's test vectors (Shanghai, Shenzhen, Beijing)
# and wandergis/coordtransform's README example wgs84togcj02(116.404, 39.915)
PUBLISHED = [
    (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215),
    (22.543847, 113.912316, 22.540796131694766, 113.9171764808363),
    (39.911954, 116.377817, 39.91334545536069, 116.38404722455657),
    (39.915, 116.404, 39.91640428150164, 116.41024449916938),
]
china = st.tuples(st.floats(18.0, 53.0), st.floats(74.0, 134.0))


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    return box_geo.haversine_m(a[0], a[1], b[0], b[1])


@pytest.mark.parametrize(("wlat", "wlon", "glat", "glon"), PUBLISHED)
def test_wgs84_to_gcj02_matches_the_published_pairs(wlat: float, wlon: float, glat: float, glon: float) -> None:
    lat, lon = geo.wgs84_to_gcj02(wlat, wlon)
    assert (lat, lon) == (pytest.approx(glat, abs=1e-9), pytest.approx(glon, abs=1e-9))


@pytest.mark.parametrize(("wlat", "wlon", "glat", "glon"), PUBLISHED)
def test_gcj02_to_wgs84_brings_the_published_pairs_back_to_a_millimetre(wlat: float, wlon: float, glat: float,
                                                                         glon: float) -> None:
    assert metres(geo.gcj02_to_wgs84(glat, glon), (wlat, wlon)) < 0.001


@settings(max_examples=300, deadline=None)
@given(china)
def test_round_trip_inside_china(p: tuple[float, float]) -> None:
    g = geo.wgs84_to_gcj02(*p)
    assert metres(p, g) > 1.0  # it really moved (hundreds of metres)
    assert metres(geo.gcj02_to_wgs84(*g), p) < 0.001


@settings(max_examples=200, deadline=None)
@given(china)
def test_the_county_and_the_box_convert_alike(p: tuple[float, float]) -> None:
    """A fence drawn on AMap in the console and checked by the box must mean the same place."""
    assert metres(geo.wgs84_to_gcj02(*p), box_geo.wgs84_to_gcj02(*p)) < 1e-6
    assert metres(geo.gcj02_to_wgs84(*p), box_geo.gcj02_to_wgs84(*p)) < 0.001


def test_outside_china_nothing_moves() -> None:
    for p in [(48.85, 2.35), (-33.86, 151.21), (60.0, 100.0)]:
        assert geo.wgs84_to_gcj02(*p) == p
        assert geo.gcj02_to_wgs84(*p) == p


def test_map_app_links_carry_the_right_datum() -> None:
    lat, lon = 39.915, 116.404
    amap = geo.amap_uri(lat, lon, "勐楼村 SOS")
    assert amap.startswith("https://uri.amap.com/marker?position=116.410244,39.916404&")  # shifted to GCJ-02
    assert "coordinate=gaode" in amap and "%E5%8B%90" in amap  # the name percent-encoded
    assert geo.geo_uri(lat, lon, "a b") == "geo:39.915000,116.404000?q=39.915000,116.404000(a%20b)"


# --------------------------------------------------------------------------------------- the browser's copy
@pytest.fixture(scope="module")
def js_page() -> Iterator[Any]:
    """A headless Chromium with gcj02.js imported as the ES module it is (from a blob: URL of the file)."""
    from county import web
    from tests.browser import need_browser, new_browser

    need_browser()
    driver = new_browser()
    try:
        driver.get("about:blank")
        source = (web.STATIC / "js" / "gcj02.js").read_text(encoding="utf-8")
        ok = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const url = URL.createObjectURL(new Blob([arguments[0]], {type: 'text/javascript'}));"
            "import(url).then(m => { window.VillageGeo = m; done(true); }, e => done(String(e)));", source)
        assert ok is True, ok
        yield driver
    finally:
        driver.quit()


def test_the_browser_converts_exactly_as_python(js_page: Any) -> None:
    rng = random.Random(20261201)
    points = [(w[0], w[1]) for w in PUBLISHED] + [(rng.uniform(18, 53), rng.uniform(74, 134)) for _ in range(300)]
    points += [(48.85, 2.35), (21.95, 101.25)]
    got = js_page.execute_script(
        "return arguments[0].map(function (p) { return [window.VillageGeo.wgs84ToGcj02(p[0], p[1]),"
        " window.VillageGeo.gcj02ToWgs84(p[0], p[1])]; });", [list(p) for p in points])
    assert len(got) == len(points)
    for p, (fwd, back) in zip(points, got, strict=True):
        want_fwd, want_back = geo.wgs84_to_gcj02(*p), geo.gcj02_to_wgs84(*p)
        # the same IEEE arithmetic in the same order: equal to the last bits or within a nanodegree
        assert math.isclose(fwd[0], want_fwd[0], abs_tol=1e-12) and math.isclose(fwd[1], want_fwd[1], abs_tol=1e-12)
        assert metres(tuple(back), want_back) < 1e-4, (p, back, want_back)
