"""The web map's routes (county/server/routes_map.py) through the real app on SQLite and PostgreSQL: the tile
settings as the page reads them, the outline (file, else the regions' points), one alarm in full with its raw
frame, fences and response times, the wearer's track, the latest positions; scope and gridworker rules."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from county.regions import parse_regions
from county.server import routes_map
from county.server.config import masked, parse_config
from county.store.tables import fence_pushes, fences, messages, positions, positions_latest
from tests.county_api import NOW_MS, REGIONS, Env, close_env, env_fixture, open_env  # noqa: F401 - `env`
from tests.support import Mosquitto
from tests.test_county_openapi import check


def schema_of(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the OpenAPI document, the 200 answer's schema of GET `path`) for `check`."""
    from county.server import openapi

    doc = openapi.document()
    return doc, doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]

PLACED = json.loads(json.dumps(REGIONS))  # the test regions with positions: a1 own, a2 its village's
PLACED["township"][0]["village"][0]["box"][0].update(lat=21.95, lon=101.25)
PLACED["township"][0]["village"][1].update(lat=21.90, lon=101.30)
PLACED["township"][1]["village"][0]["box"][0].update(lat=22.05, lon=101.20)
OUTLINE = {"type": "FeatureCollection", "features": [
    {"type": "Feature", "properties": {"name": "勐海县"}, "geometry": {"type": "Polygon", "coordinates": [
        [[101.0, 21.8], [101.5, 21.8], [101.5, 22.2], [101.0, 22.2], [101.0, 21.8]]]}},
    {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [101.2, 22.0]}}]}


@pytest.fixture(name="map_env")
async def map_env_fixture(db_url: str, broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Env]:
    (tmp_path / "outline.geojson").write_text(json.dumps(OUTLINE), encoding="utf-8")
    e = await open_env(db_url, broker, tmp_path, map={"tiles": "amap", "outline": str(tmp_path / "outline.geojson")})
    e.app.state.regions = parse_regions(PLACED)
    try:
        yield e
    finally:
        await close_env(e)


def test_tile_settings_per_kind() -> None:
    none = routes_map.tile_config(parse_config({}).map)
    assert none == {"kind": "none", "crs": "WGS84", "layers": [], "attribution": "", "max_zoom": 18}
    tdt_config = parse_config({"map": {"tiles": "tianditu", "key": "abc123"}})
    assert masked(tdt_config)["map"]["key"] == "***"  # the browser gets it in the tile URL; dumps and logs never
    tdt = routes_map.tile_config(tdt_config.map)
    assert tdt["crs"] == "WGS84" and len(tdt["layers"]) == 2
    assert all("tk=abc123" in layer["url"] and "{z}" in layer["url"] for layer in tdt["layers"])
    amap = routes_map.tile_config(parse_config({"map": {"tiles": "amap"}}).map)
    assert amap["crs"] == "GCJ02" and amap["layers"][0]["url"].startswith("https://webrd0{s}.is.autonavi.com/")
    own = parse_config({"map": {"tiles": "custom", "url": "https://{s}.tiles.county.gov.cn/{z}/{x}/{y}.png",
                                "subdomains": "ab", "crs": "GCJ02", "attribution": "县自然资源局"}}).map
    assert routes_map.tile_config(own) == {"kind": "custom", "crs": "GCJ02", "attribution": "县自然资源局",
                                           "max_zoom": 18, "layers": [
                                               {"url": "https://{s}.tiles.county.gov.cn/{z}/{x}/{y}.png",
                                                "subdomains": "ab"}]}
    assert routes_map.tile_origins(own) == ["https://*.tiles.county.gov.cn"]
    assert routes_map.tile_origins(parse_config({}).map) == []


@pytest.mark.parametrize(("raw", "match"), [
    ({"tiles": "tianditu"}, "map.key: .*needs key"),
    ({"tiles": "custom"}, "map.url: .*needs url"),
    ({"tiles": "custom", "url": "ftp://x/{z}/{x}/{y}"}, "map.url: .*not an http"),
    ({"tiles": "custom", "url": "https://u:p@x/{z}/{x}/{y}"}, "map.url: no user:password"),
    ({"tiles": "custom", "url": "https://x/{z}/{x}"}, r"map.url: .*lacks \{y\}"),
    ({"tiles": "amap", "crs": "GCJ02"}, "map.crs: crs is for tiles"),
    ({"tiles": "tianditu", "key": "a b"}, "map.key: a tile key"),
    ({"tiles": "osm"}, "map.tiles: must be one of"),
    ({"outline": "/nonexistent.geojson"}, "map.outline: file"),
])
def test_bad_map_settings_are_one_clear_line(raw: dict[str, object], match: str) -> None:
    from county.server.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        parse_config({"map": raw})


async def test_map_gives_tiles_outline_and_the_places_in_scope(map_env: Env) -> None:
    r = await map_env.get("viewer", "/api/v1/map")
    assert r.status_code == 200
    got = r.json()
    check(*schema_of("/api/v1/map"), got)
    assert got["tiles"]["kind"] == "amap" and got["tiles"]["crs"] == "GCJ02"
    assert got["outline_source"] == "file"
    assert [f["geometry"]["type"] for f in got["outline"]["features"]] == ["Polygon"]  # the Point is dropped
    assert {p["box"]: (p["lat"], p["lon"]) for p in got["places"]} == {
        "a1": (21.95, 101.25), "a2": (21.90, 101.30), "b1": (22.05, 101.20)}
    scoped = (await map_env.get("op-a", "/api/v1/map")).json()
    assert {p["box"] for p in scoped["places"]} == {"a1", "a2"}
    assert "key" not in json.dumps(got["tiles"]).replace("kind", "")  # amap: no key of any sort


async def test_without_an_outline_file_the_regions_points_make_one(env: Env) -> None:
    env.app.state.regions = parse_regions(PLACED)
    got = (await env.get("viewer", "/api/v1/map")).json()
    assert got["tiles"]["layers"] == [] and got["outline_source"] == "points"
    ring = got["outline"]["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) > 8
    from shapely.geometry import Point, Polygon

    area = Polygon(ring)
    for lon, lat in [(101.2, 22.05), (101.25, 21.95), (101.3, 21.9)]:  # every place inside, with room around it
        assert area.contains(Point(lon, lat)) and area.exterior.distance(Point(lon, lat)) > 0.005


async def test_an_unreadable_outline_file_draws_the_points_instead(db_url: str, broker: Mosquitto,
                                                                   tmp_path: Path) -> None:
    bad = tmp_path / "outline.geojson"
    bad.write_text("{not json", encoding="utf-8")
    e = await open_env(db_url, broker, tmp_path, map={"outline": str(bad)})
    try:
        got = (await e.get("viewer", "/api/v1/map")).json()
        assert got["outline"] is None and got["outline_source"] is None  # no points in the plain regions
    finally:
        await close_env(e)


async def _alarm_with_frame(env: Env) -> None:
    envelope = {"v": 1, "box": "a1", "seq": 7, "ts": NOW_MS - 60_000, "class": "alarm", "kind": "geofence_exit",
                "data": {"wearer": "w-1", "fence": "home", "pos": {"lat": 21.9, "lon": 101.2}}}
    await env.add_alarm("a1:7", "a1", kind="geofence_exit", received=NOW_MS - 59_000, state="acknowledged",
                        acked_by="operator", acked_at=NOW_MS - 29_000,
                        data={"wearer": "w-1", "fence": "home", "pos": {"lat": 21.9, "lon": 101.2}})
    await env.insert(messages, {"id": "a1:7", "box": "a1", "seq": 7, "ts": NOW_MS - 60_000, "class": "alarm",
                                "kind": "geofence_exit", "received": NOW_MS - 59_000, "raw": json.dumps(envelope)})
    square = {"type": "Feature", "id": "home", "properties": {"name": "家"}, "geometry": {"type": "Polygon",
              "coordinates": [[[101.1, 21.8], [101.3, 21.8], [101.3, 22.0], [101.1, 22.0], [101.1, 21.8]]]}}
    await env.insert(fences, {"id": "home", "name": "家", "feature": square, "crs": "WGS84", "created_by": "operator",
                              "updated_at": NOW_MS})


async def test_one_alarm_in_full(env: Env) -> None:
    await _alarm_with_frame(env)
    r = await env.get("viewer", "/api/v1/alarms/a1:7")
    assert r.status_code == 200
    got = r.json()
    check(*schema_of("/api/v1/alarms/{id}"), got)
    assert got["state"] == "acknowledged" and got["box_name"] == "甲一村委会"
    assert json.loads(got["raw"])["seq"] == 7 and got["data"]["fence"] == "home"
    assert [f["id"] for f in got["fences"]] == ["home"]
    assert got["response"] == {"ack_s": 30.0, "assign_s": None, "resolve_s": None}
    assert (await env.get("viewer", "/api/v1/alarms/nope")).status_code == 404
    assert (await env.get("gw-a", "/api/v1/alarms/a1:7")).status_code == 403  # not assigned to them
    assert (await env.get("op-b" if "op-b" in env.tokens else "gw-b", "/api/v1/alarms/a1:7")).status_code == 403


async def test_an_sos_shows_the_fences_last_pushed_for_its_wearer(env: Env) -> None:
    await _alarm_with_frame(env)
    await env.add_alarm("a1:8", "a1")  # an sos of w-1
    await env.insert(fence_pushes, [
        {"id": "p-old", "fences": {}, "assign": {"w-1": ["gone"]}, "targets": [], "boxes": [], "created_by": "x",
         "created_at": NOW_MS - 10_000},
        {"id": "p-new", "fences": {}, "assign": {"w-1": ["home"], "w-2": ["x"]}, "targets": [], "boxes": [],
         "created_by": "x", "created_at": NOW_MS - 5_000}])
    got = (await env.get("operator", "/api/v1/alarms/a1:8")).json()
    assert [f["id"] for f in got["fences"]] == ["home"] and got["raw"] is None


async def test_the_track_is_the_wearers_hour_before_the_alarm_inside_the_scope(env: Env) -> None:
    await env.add_alarm("a1:9", "a1", ts=NOW_MS - 60_000, state="assigned", assigned_to="gw-a")
    pts = [{"box": "a1", "wearer": "w-1", "lat": 21.9 + i / 1000, "lon": 101.2, "acc_m": 5.0,
            "ts": NOW_MS - 60_000 - i * 600_000} for i in range(8)]  # every 10 min back to 70 min before
    pts.append({"box": "b1", "wearer": "w-1", "lat": 22.0, "lon": 101.2, "acc_m": None, "ts": NOW_MS - 120_000})
    pts.append({"box": "a1", "wearer": "w-2", "lat": 22.0, "lon": 101.2, "acc_m": None, "ts": NOW_MS - 120_000})
    await env.insert(positions, pts)
    got = (await env.get("gw-a", "/api/v1/alarms/a1:9/track")).json()
    check(*schema_of("/api/v1/alarms/{id}/track"), got)
    assert got["wearer"] == "w-1" and got["from"] == NOW_MS - 60_000 - 3_600_000 and got["to"] == NOW_MS
    assert [p["ts"] for p in got["points"]] == sorted(p["ts"] for p in pts[:7])  # b1 is outside town-a
    everything = (await env.get("admin", "/api/v1/alarms/a1:9/track", params={"minutes": 90})).json()
    assert len(everything["points"]) == 9 and {p["box"] for p in everything["points"]} == {"a1", "b1"}
    assert (await env.get("admin", "/api/v1/alarms/a1:9/track", params={"minutes": 0})).status_code == 400
    assert (await env.get("gw-b", "/api/v1/alarms/a1:9/track")).status_code == 403


async def test_latest_positions_in_scope_and_never_to_a_gridworker(env: Env) -> None:
    await env.insert(positions_latest, [
        {"box": "a1", "wearer": "w-1", "device": "d-1", "lat": 21.9, "lon": 101.2, "acc_m": 4.0, "fix_ts": NOW_MS,
         "ts": NOW_MS},
        {"box": "b1", "wearer": "w-3", "device": "d-3", "lat": 22.0, "lon": 101.2, "acc_m": None, "fix_ts": None,
         "ts": NOW_MS - 5}])
    everyone = (await env.get("viewer", "/api/v1/positions")).json()
    check(*schema_of("/api/v1/positions"), everyone)
    assert [p["wearer"] for p in everyone] == ["w-1", "w-3"]
    assert [p["wearer"] for p in (await env.get("op-a", "/api/v1/positions")).json()] == ["w-1"]
    r = await env.get("gw-a", "/api/v1/positions")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_convex_hull() -> None:
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.5, 0.5), (0.2, 0.8)]
    assert sorted(routes_map.convex_hull(square)) == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    assert routes_map.convex_hull([(1.0, 1.0), (2.0, 2.0)]) == [(1.0, 1.0), (2.0, 2.0)]


async def test_assignees_are_the_gridworkers_whose_scope_covers_the_box(env: Env) -> None:
    await env.add_alarm("a1:1", "a1")
    await env.add_alarm("b1:1", "b1")
    assert [u["name"] for u in (await env.get("operator", "/api/v1/alarms/a1:1/assignees")).json()] == ["gw-a"]
    got = (await env.get("operator", "/api/v1/alarms/b1:1/assignees")).json()
    check(*schema_of("/api/v1/alarms/{id}/assignees"), got)
    assert got == [{"name": "gw-b", "display_name": None, "phone": got[0]["phone"]}]
    assert (await env.get("op-a", "/api/v1/alarms/b1:1/assignees")).status_code == 403  # outside their scope
    assert (await env.get("viewer", "/api/v1/alarms/a1:1/assignees")).status_code == 403
