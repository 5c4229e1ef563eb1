"""fences.py: GeoJSON in, WGS-84 fences out; typed errors; GCJ-02/BD-09 fences against WGS-84 fixes."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.wearables import geo
from agent.wearables.fences import BAND, INSIDE, OUTSIDE, FenceError, check_assign, load_fences, load_fences_file
from tests.wearables_support import LAT0, LON0, collection, latlon, square

SH = ZoneInfo("Asia/Shanghai")


def test_square_classifies_inside_band_outside() -> None:
    fence = load_fences(collection(square()))["home"]
    assert fence.classify(*latlon(0, 0), 25) == INSIDE
    assert fence.classify(*latlon(199, 0), 25) == INSIDE
    assert fence.classify(*latlon(210, 0), 25) == BAND  # 10 m out, margin 25
    assert fence.classify(*latlon(230, 0), 25) == OUTSIDE
    assert fence.classify(*latlon(5000, 5000), 25) == OUTSIDE  # the bounding-box shortcut
    assert fence.signed_distance_m(*latlon(230, 0)) == pytest.approx(30, abs=0.5)
    assert fence.signed_distance_m(*latlon(0, 0)) == pytest.approx(-200, abs=0.5)


def test_gcj02_fence_against_wgs84_fixes() -> None:
    """A fence drawn on an AMap (GCJ-02) screen must be tested against WGS-84 band fixes after conversion."""
    drawn_gcj = square(100.0, to=geo.wgs84_to_gcj02)  # what the county drew, as GCJ-02 coordinates
    right = load_fences(collection(drawn_gcj), "GCJ02")["home"]
    wrong = load_fences(collection(drawn_gcj), "WGS84")["home"]
    centre = latlon(0, 0)  # a WGS-84 fix in the middle of the real place
    assert right.classify(*centre, 25) == INSIDE
    assert right.signed_distance_m(*centre) == pytest.approx(-100, abs=0.5)
    # read as if it were WGS-84 the fence sits ~330 m off: a false exit for everyone
    assert wrong.classify(*centre, 25) == OUTSIDE
    assert wrong.signed_distance_m(*centre) > 150  # the GCJ-02 shift here is about 330 m


def test_gcj02_circle_with_a_published_pair() -> None:
    # eviltransform's Beijing pair: WGS-84 (39.911954, 116.377817) is GCJ-02 (39.91334545536069, 116.38404722455657)
    doc = collection({"type": "Feature", "id": "c", "properties": {"radius_m": 10},
                      "geometry": {"type": "Point", "coordinates": [116.38404722455657, 39.91334545536069]}})
    fence = load_fences(doc, "GCJ02")["c"]
    assert fence.classify(39.911954, 116.377817, 25) == INSIDE
    assert fence.signed_distance_m(39.911954, 116.377817) == pytest.approx(-10, abs=0.01)


def test_bd09_fence_is_converted() -> None:
    fence = load_fences(collection(square(100.0, to=geo.wgs84_to_bd09)), "BD09")["home"]
    assert fence.signed_distance_m(*latlon(0, 0)) == pytest.approx(-100, abs=0.5)


def test_multipolygon_and_hole() -> None:
    a = square(100.0)["geometry"]["coordinates"]
    far = [[[lon + 0.05, lat] for lon, lat in a[0]]]
    hole = [[lon, lat] for lon, lat in square(20.0)["geometry"]["coordinates"][0]]
    doc = collection({"type": "Feature", "id": "two", "properties": {"name": "两块地"},
                      "geometry": {"type": "MultiPolygon", "coordinates": [[a[0], hole], far]}})
    fence = load_fences(doc)["two"]
    assert fence.name == "两块地"
    assert fence.classify(*latlon(50, 50), 0) == INSIDE
    assert fence.classify(*latlon(0, 0), 0) == OUTSIDE  # in the hole
    assert fence.classify(LAT0, LON0 + 0.05, 0) == INSIDE  # the second part


def test_fingerprint_follows_shape_not_name_or_schedule() -> None:
    a = load_fences(collection(square(props={"name": "a"})))["home"]
    b = load_fences(collection(square(props={"name": "b", "schedule": {"from": "22:00", "to": "06:00"}})))["home"]
    c = load_fences(collection(square(150.0)))["home"]
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_schedule_over_midnight_in_local_time() -> None:
    fence = load_fences(collection(square(props={"schedule": {"from": "22:00", "to": "06:00"}})))["home"]
    assert fence.schedule is not None

    def at(h: int, m: int = 0) -> float:
        return datetime(2026, 11, 23, h, m, tzinfo=SH).timestamp()

    assert fence.schedule.active(at(23))
    assert fence.schedule.active(at(3))
    assert not fence.schedule.active(at(6))
    assert not fence.schedule.active(at(12))
    assert fence.schedule.active(at(22))


def test_schedule_days() -> None:
    fence = load_fences(collection(square(props={"schedule": [{"from": "08:00", "to": "12:00", "days": [1]}]})))
    sched = fence["home"].schedule
    assert sched is not None
    monday = datetime(2026, 11, 23, 9, tzinfo=SH).timestamp()  # 2026-11-23 is a Monday
    assert sched.active(monday)
    assert not sched.active(monday + 86400)


@pytest.mark.parametrize(("doc", "crs", "match"), [
    ({"type": "Feature"}, "WGS84", "expected a GeoJSON FeatureCollection"),
    (collection(square()), "EPSG:4326", "crs: must be one of"),
    (collection({"type": "Feature", "properties": {}, "geometry": square()["geometry"]}), "WGS84", "needs an id"),
    (collection(square(), square()), "WGS84", "duplicate fence id 'home'"),
    (collection({"type": "Feature", "id": "p", "geometry": {"type": "Point", "coordinates": [100.8, 22.0]}}),
     "WGS84", r"radius_m"),
    (collection({"type": "Feature", "id": "l", "geometry": {"type": "LineString", "coordinates": []}}),
     "WGS84", "unsupported type 'LineString'"),
    (collection({"type": "Feature", "id": "x", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}),
     "WGS84", "at least 3 distinct"),
    (collection({"type": "Feature", "id": "y",
                 "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 95], [2, 0]]]}}),
     "WGS84", "latitude out of range"),
    (collection(square(props={"schedule": {"from": "25:00", "to": "06:00"}})), "WGS84", "HH:MM"),
    (collection(square(props={"schedule": {"from": "22:00", "to": "06:00", "tz": "Mars/Olympus"}})), "WGS84",
     "unknown time zone"),
])
def test_bad_documents_raise_fence_error_naming_the_place(doc: object, crs: str, match: str) -> None:
    with pytest.raises(FenceError, match=match):
        load_fences(doc, crs)


def test_file_loader(tmp_path: Path) -> None:
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps(collection(square())))
    assert set(load_fences_file(path)) == {"home"}
    with pytest.raises(FenceError, match="does not exist"):
        load_fences_file(tmp_path / "nope.geojson")
    path.write_text("{not json")
    with pytest.raises(FenceError, match="not a readable GeoJSON"):
        load_fences_file(path)


def test_check_assign() -> None:
    fences = load_fences(collection(square(), square(fid="school")))
    assert check_assign({"W1": ["home", "school"], "W2": "home"}, fences) == {"W1": ("home", "school"),
                                                                             "W2": ("home",)}
    with pytest.raises(FenceError, match=r"assign.W1: unknown fence id\(s\) \['farm'\]"):
        check_assign({"W1": ["farm"]}, fences)
    with pytest.raises(FenceError, match="expected an object"):
        check_assign(["W1"], fences)
