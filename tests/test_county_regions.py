"""The regions file: the shipped example parses, lookups (box -> place, scope -> boxes, targets -> boxes),
unregistered boxes kept, and one-line errors for duplicates and unknown keys."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from county.regions import Regions, RegionsError, load_regions, parse_regions

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "county" / "regions.example.toml"

SMALL = {
    "county": {"id": "menghai", "name": "勐海县"},
    "township": [
        {"id": "t1", "name": "勐楼镇", "village": [
            {"id": "v1", "name": "勐楼村", "lat": 21.95, "lon": 101.25, "box": [
                {"id": "b1", "name": "村委会", "groups": ["g-town", "g-north"]},
                {"id": "b2", "groups": ["g-town"], "lat": 21.96, "lon": 101.26},
            ]},
            {"id": "v2", "name": "曼播村", "box": [{"id": "b3"}]},
        ]},
        {"id": "t2", "name": "勐遮镇", "village": [{"id": "v3", "name": "曼恩村", "box": [{"id": "b4"}]}]},
    ],
}


def test_the_shipped_example_names_the_menglou_box() -> None:
    regions = load_regions(EXAMPLE)
    scenario = tomllib.loads((REPO / "sim" / "scenarios" / "menglou.toml").read_text())
    box = scenario["box"]["id"]
    place = regions.place(box)
    assert place.registered and place.village_name == "勐楼村" and place.township_name == "勐楼镇"
    assert set(scenario["box"]["groups"]) <= set(place.groups)
    assert regions.county_name == "勐海县"


def test_lookups() -> None:
    r = parse_regions(SMALL)
    p = r.place("b1")
    assert (p.name, p.village, p.village_name) == ("村委会", "v1", "勐楼村")
    assert (p.township, p.township_name) == ("t1", "勐楼镇")
    assert (p.lat, p.lon) == (21.95, 101.25)  # the village's coordinates when the box has none
    assert (r.place("b2").lat, r.place("b2").name) == (21.96, "b2")
    assert r.boxes_in("t1") == {"b1", "b2", "b3"} and r.boxes_in("v2") == {"b3"}
    assert r.boxes_in(None) == r.boxes_in("menghai") == {"b1", "b2", "b3", "b4"}
    assert r.in_scope("b3", "t1") and not r.in_scope("b4", "t1") and r.in_scope("b4", None)
    assert r.region_within("v1", "t1") and r.region_within("t1", "t1") and not r.region_within("t1", "v1")
    assert not r.region_within("v3", "t1") and not r.region_within(None, "t1") and r.region_within("v3", None)
    with pytest.raises(KeyError):
        r.boxes_in("nowhere")


def test_unregistered_boxes_are_kept_not_dropped() -> None:
    r = parse_regions(SMALL)
    p = r.place("stranger-9")
    assert p.box == "stranger-9" and not p.registered and p.village is None and p.township_name is None
    assert r.in_scope("stranger-9", None)          # the whole county sees it
    assert not r.in_scope("stranger-9", "t1")      # a township does not
    empty = Regions.empty()
    assert not empty.place("b1").registered and empty.in_scope("b1", None) and empty.boxes_in(None) == set()


def test_targets_resolve_with_reported_groups() -> None:
    r = parse_regions(SMALL)
    reported = {"b4": ["g-town"], "stranger-9": ["g-town", "other"], "b1": None}
    got = r.resolve(["group:g-town", "group:g-north", "box:b4", "box:ghost", "group:nobody"], reported)
    assert got == {"group:g-town": {"b1", "b2", "b4", "stranger-9"}, "group:g-north": {"b1"},
                   "box:b4": {"b4"}, "box:ghost": {"ghost"}, "group:nobody": frozenset()}
    assert r.boxes_for(["group:g-north", "box:b3"]) == {"b1", "b3"}
    with pytest.raises(ValueError, match="not box:ID or group:NAME"):
        r.resolve(["village:v1"])
    with pytest.raises(ValueError):
        r.resolve(["box:bad id"])


def _bad(tmp_path: Path, text: str) -> str:
    p = tmp_path / "regions.toml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(RegionsError) as info:
        load_regions(p)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{p}: ")
    return line


HEAD = '[county]\nid = "c"\nname = "县"\n'


@pytest.mark.parametrize(("body", "expected"), [
    ('[[township]]\nid = "t"\nname = "镇"\n[[township]]\nid = "t"\nname = "二镇"\n',
     "township[1].id: duplicate region id 't' (also township[0].id)"),
    ('[[township]]\nid = "t"\nname = "镇"\n[[township.village]]\nid = "t"\nname = "村"\n',
     "township[0].village[0].id: duplicate region id 't'"),
    ('[[township]]\nid = "c"\nname = "镇"\n', "township[0].id: duplicate region id 'c' (also county.id)"),
    ('[[township]]\nid = "t"\nname = "镇"\n[[township.village]]\nid = "v"\nname = "村"\n'
     '[[township.village.box]]\nid = "b"\n[[township.village]]\nid = "w"\nname = "村二"\n'
     '[[township.village.box]]\nid = "b"\n',
     "township[0].village[1].box[0].id: duplicate box id 'b' (also township[0].village[0].box[0].id)"),
    ('[[township]]\nid = "t"\nname = "镇"\ncolour = "red"\n', "township[0].colour: unknown key"),
    ('[[township]]\nid = "t"\nname = "镇"\n[[township.village]]\nid = "v"\nname = "村"\n'
     '[[township.village.box]]\nid = "b"\ngroup = ["g"]\n', "township[0].village[0].box[0].group: unknown key"),
    ('[[township]]\nid = "t t"\nname = "镇"\n', "township[0].id: 't t' is not [A-Za-z0-9_-]"),
    ('[[township]]\nid = "t"\nname = ""\n', "township[0].name: a display name"),
    ('[[township]]\nid = "t"\nname = "镇"\nlat = 91.0\nlon = 1.0\n', "township[0].lat: latitude must be"),
    ('[[township]]\nid = "t"\nname = "镇"\nlat = 21.0\n', "township[0].lon: lat and lon go together"),
    ('[[township]]\nname = "镇"\n', "township[0].id: missing (required)"),
])
def test_bad_regions_files(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in _bad(tmp_path, HEAD + body)


def test_regions_file_without_county(tmp_path: Path) -> None:
    assert "county: missing (required)" in _bad(tmp_path, '[[township]]\nid = "t"\nname = "镇"\n')
    assert "not valid TOML" in _bad(tmp_path, "[county\n")
