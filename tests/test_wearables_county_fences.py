"""county/fences.py: the geofence.set data the console signs, and that the box accepts it unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.wearables import geo
from agent.wearables.fences import check_assign, load_fences
from county.fences import FenceFileError, build_geofence_command_data
from tests.wearables_support import collection, square


def write(tmp_path: Path, doc: object, name: str = "f.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def test_builds_data_the_box_accepts(tmp_path: Path) -> None:
    circle = {"type": "Feature", "id": "well", "properties": {"radius_m": 30, "name": "水井"},
              "geometry": {"type": "Point", "coordinates": [100.8, 22.0]}}
    path = write(tmp_path, collection(square(to=geo.wgs84_to_gcj02), circle))
    data = build_geofence_command_data(path, "GCJ02", {"W1": ["home", "well"], "W2": ["home"]})
    assert data["crs"] == "GCJ02"
    assert data["assign"] == {"W1": ["home", "well"], "W2": ["home"]}
    assert json.loads(json.dumps(data)) == data  # plain JSON, ready to sign
    fences = load_fences(data["fences"], data["crs"])  # what the box does with it
    assert set(fences) == {"home", "well"}
    assert check_assign(data["assign"], fences) == {"W1": ("home", "well"), "W2": ("home",)}


def test_bom_and_no_assignment(tmp_path: Path) -> None:
    path = tmp_path / "bom.geojson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(collection(square())).encode())
    assert build_geofence_command_data(path)["assign"] == {}


@pytest.mark.parametrize(("doc", "crs", "assign", "match"), [
    ({"type": "Feature"}, "WGS84", None, "FeatureCollection"),
    (collection(), "WGS84", None, "no features"),
    (collection(square()), "WGS-84", None, "crs must be one of"),
    (collection(square(), square()), "WGS84", None, "duplicate fence id 'home'"),
    (collection(square()), "WGS84", {"W1": ["school"]}, r"fence id\(s\) \['school'\] are not in the file"),
    (collection({"type": "Feature", "id": "p", "geometry": {"type": "Point", "coordinates": [100.8, 22.0]}}),
     "WGS84", None, "radius_m"),
    (collection({"type": "Feature", "properties": {}, "geometry": square()["geometry"]}), "WGS84", None, "needs an id"),
    (collection({"type": "Feature", "id": "l", "geometry": {"type": "LineString", "coordinates": []}}), "WGS84",
     None, "geometry must be one of"),
])
def test_mistakes_are_caught_before_anything_is_sent(tmp_path: Path, doc: object, crs: str,
                                                     assign: dict[str, list[str]] | None, match: str) -> None:
    with pytest.raises(FenceFileError, match=match):
        build_geofence_command_data(write(tmp_path, doc), crs, assign)


def test_missing_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(FenceFileError, match="does not exist"):
        build_geofence_command_data(tmp_path / "nope.geojson")
    path = tmp_path / "bad.geojson"
    path.write_text("{")
    with pytest.raises(FenceFileError, match="not JSON"):
        build_geofence_command_data(path)


def test_a_huge_integer_coordinate_is_a_fence_file_error(tmp_path: Path) -> None:
    """JSON integers have no size limit: 10**400 must be refused as out of range, not overflow float()."""
    ring = [[0, 10**400], [1, 0], [1, 1], [0, 10**400]]
    doc = collection({"type": "Feature", "id": "big", "geometry": {"type": "Polygon", "coordinates": [ring]}})
    with pytest.raises(FenceFileError, match="a ring is a list of"):
        build_geofence_command_data(write(tmp_path, doc), "WGS84")
