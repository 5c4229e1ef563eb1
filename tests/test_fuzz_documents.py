"""Fuzzing the documents the county feeds in (hypothesis, bounded): CAP 1.2 alerts and GeoJSON fences.

CAP comes from a provincial warning platform, fences from a technician's GIS export; both then travel to
every box. Whatever they hold, the parser raises its own typed error (CapError, FenceError, FenceFileError)
or returns something usable, and the size limits hold (MAX_CAP_BYTES, MAX_FENCES, MAX_VERTICES).
Seeds are the public peer alerts in ../shared/testdata/peers (the `peers` fixture's directory).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.wearables.fences import (
    MAX_FENCES,
    MAX_VERTICES,
    FenceError,
    check_assign,
    load_fences,
    load_fences_file,
    parse_schedule,
)
from county.cap import MAX_CAP_BYTES, CapError, parse_cap, plan
from county.console import format_state
from county.fences import FenceFileError, build_geofence_command_data
from tests.conftest import PEERS

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NOW = 1_763_900_000.0
SEEDS = sorted(p.read_bytes() for p in PEERS.glob("cap-*.xml")) if PEERS.is_dir() else []
CAP_FIELDS = ["identifier", "sender", "sent", "status", "msgType", "scope", "references", "language", "event",
              "urgency", "severity", "certainty", "headline", "description", "instruction", "effective", "onset",
              "expires", "category"]
TIMES = st.sampled_from(["2025-01-01T00:00:00+08:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
                         "2025-13-01T00:00:00Z", "2025-01-01T00:00:00", "2025-01-01", "now", "", "1e9"])
WORDS = st.sampled_from(["Actual", "Exercise", "Test", "System", "Draft", "Alert", "Update", "Cancel", "Public",
                         "Restricted", "Extreme", "Severe", "Moderate", "Minor", "Unknown", "zh-CN", "en",
                         "a,b,c", "a,b", "a,b,c d,e,f", ",,", "sender,id,2025-01-01T00:00:00+08:00"])


def test_seeds_are_there_and_parse(peers: Path) -> None:
    assert SEEDS, f"no CAP seeds in {peers}"
    for seed in SEEDS:
        plan(parse_cap(seed), NOW)


@st.composite
def cap_documents(draw: st.DrawFn) -> bytes:
    """A peer alert with fields' text replaced, elements dropped, bytes spliced in; or plain junk."""
    shape = draw(st.sampled_from(["fields", "fields", "bytes", "splice", "junk"]))
    if shape == "junk" or not SEEDS:
        return draw(st.binary(max_size=400))
    doc = draw(st.sampled_from(SEEDS)).decode("utf-8")
    if shape in ("fields", "splice"):
        for name in draw(st.lists(st.sampled_from(CAP_FIELDS), min_size=1, max_size=5)):
            value = draw(TIMES | WORDS | st.text(max_size=40))
            pattern = re.compile(rf"(<(?:\w+:)?{name}>)(.*?)(</(?:\w+:)?{name}>)", re.S)
            if draw(st.booleans()):
                doc = pattern.sub(lambda m, v=value: m.group(1) + escape(v) + m.group(3), doc, count=1)
            else:
                doc = pattern.sub("", doc, count=1)
    data = doc.encode("utf-8")
    if shape in ("bytes", "splice"):
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data)))
            insert = draw(st.sampled_from([b"<", b">", b"&", b"&amp;", b"\x00", b"\xff", b"<!DOCTYPE a>",
                                           b'<!ENTITY e "x">', b"&e;", b"<![CDATA[x]]>", b"<info>", b"</alert>",
                                           b'encoding="rot13"', b'encoding="utf-32"'])
                          | st.binary(max_size=8))
            data = data[:i] + insert + data[i + draw(st.integers(0, 4)):]
    return data


@FUZZ
@given(cap_documents())
def test_cap_raises_only_cap_error(data: bytes) -> None:
    try:
        result = plan(parse_cap(data), NOW)
    except CapError as exc:
        assert str(exc)
        return
    assert result.broadcast_id.startswith("cap-")
    if result.play is not None:
        assert result.play["class"] in ("emergency", "daily", "drill") and 1 <= result.play["level"] <= 4
        assert isinstance(result.play["text"], str) and result.play["text"]
        for key in ("start", "end"):
            assert result.play[key] is None or isinstance(result.play[key], int)


@pytest.mark.parametrize("encoding", ["ETF-8", "rot13", "base64", "idna", "utf-32", "undefined", "punycode"])
def test_cap_with_a_strange_encoding_declaration_is_a_cap_error(encoding: str) -> None:
    """Found by atheris (bench/fuzz/run.py cap): expat hands the declared encoding to Python's codecs, and
    LookupError/UnicodeError/ValueError escaped the CAP parser."""
    doc = f'<?xml version="1.0" encoding="{encoding}"?><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>'
    with pytest.raises(CapError, match="encoding"):
        parse_cap(doc.encode())


def test_cap_size_limit_and_entity_bomb() -> None:
    with pytest.raises(CapError, match="limit"):
        parse_cap(b"<alert>" + b" " * MAX_CAP_BYTES + b"</alert>")
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b"<alert>&b;</alert>")
    with pytest.raises(CapError, match="DOCTYPE"):
        parse_cap(bomb)


# ------------------------------------------------------------------------------------------ GeoJSON
numbers = (st.floats() | st.integers(-(10**400), 10**400) | st.sampled_from([0, 90, -90, 180, -180, 116.4, 39.9]))
positions = st.lists(numbers, min_size=0, max_size=3) | st.just([116.4, 39.9]) | st.none() | st.text(max_size=3)
rings = st.lists(positions, max_size=6) | st.just([[116.40, 39.90], [116.41, 39.90], [116.41, 39.91], [116.40, 39.90]])
hhmm = (st.sampled_from(["08:00", "24:00", "23:59", "24:01", "8", "²:00", "08:٠٠", "-1:00", "08:60", ""])
        | st.text(max_size=6))
schedules = st.none() | st.fixed_dictionaries({"from": hhmm, "to": hhmm}, optional={
    "days": st.lists(st.integers(-1, 9) | st.booleans(), max_size=3),
    "tz": st.sampled_from(["Asia/Shanghai", "UTC", "Nowhere/City", "../../etc/passwd", "", "a" * 300, "\x00"])})


@st.composite
def features(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.none() | st.integers() | st.text(max_size=5) | st.lists(st.none(), max_size=2))
    gtype = draw(st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString", None]))
    if gtype == "Point":
        coords: Any = draw(positions)
    elif gtype == "Polygon":
        coords = draw(st.lists(rings, max_size=2))
    else:
        coords = draw(st.lists(st.lists(rings, max_size=2), max_size=2))
    props = draw(st.fixed_dictionaries({}, optional={
        "id": st.text(max_size=70) | st.integers() | st.booleans(), "name": st.text(max_size=10),
        "radius_m": numbers | st.booleans(), "schedule": schedules | st.lists(schedules, max_size=2)}))
    feature = {"type": draw(st.sampled_from(["Feature", "Feature", "feature"])), "properties": props,
               "geometry": {"type": gtype, "coordinates": coords}}
    if draw(st.booleans()):
        feature["id"] = draw(st.text(min_size=1, max_size=8))
    return feature


@FUZZ
@given(schedules | st.lists(schedules, max_size=3) | st.integers() | st.text(max_size=5))
def test_schedule_raises_only_fence_error(raw: Any) -> None:
    try:
        parse_schedule(raw, "schedule")
    except FenceError:
        pass


@pytest.mark.parametrize("value", ["²:00", "08:²0", "1" * 5000 + ":00", "08:00:00", " 8:00", "８:00"])
def test_schedule_times_with_unicode_or_huge_digits_are_fence_errors(value: str) -> None:
    with pytest.raises(FenceError, match="HH:MM"):
        parse_schedule({"from": value, "to": "09:00"}, "schedule")


collections = st.fixed_dictionaries({"type": st.sampled_from(["FeatureCollection", "Feature", 1]),
                                     "features": st.lists(features(), max_size=4) | st.none()})


@FUZZ
@given(doc=collections, crs=st.sampled_from(["WGS84", "GCJ02", "BD09", "EPSG:4326"]),
       assign=st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4) | st.lists(st.text(max_size=4)),
                                          max_size=2))
def test_fence_loader_raises_only_fence_error(doc: Any, crs: str, assign: Any) -> None:
    try:
        fences = load_fences(doc, crs)
        check_assign(assign, fences)
    except FenceError as exc:
        assert exc.where
        return
    for fence in fences.values():
        fence.classify(39.905, 116.405, 10.0)  # a loaded fence must be usable, not only loadable


@FUZZ
@given(doc=collections, crs=st.sampled_from(["WGS84", "GCJ02", "BD09"]))
def test_county_fence_builder_raises_only_fence_file_error(tmp_path_factory: pytest.TempPathFactory, doc: Any,
                                                           crs: str) -> None:
    path = tmp_path_factory.getbasetemp() / "fences.geojson"
    path.write_text(json.dumps(doc))
    try:
        data = build_geofence_command_data(path, crs)
    except FenceFileError:
        return
    load_fences(data["fences"], data["crs"])  # what the county sends, the box accepts


def test_deeply_nested_json_files_are_typed_errors(tmp_path: Path) -> None:
    path = tmp_path / "deep.geojson"
    path.write_bytes(b"[" * 200_000)
    with pytest.raises(FenceFileError, match="nested"):
        build_geofence_command_data(path)
    with pytest.raises(FenceError):
        load_fences_file(path)
    assert "state  ?" in format_state("box-1", b"[" * 200_000)  # a box's state payload, seen by the console


def test_fence_limits_bound_memory() -> None:
    square = [[116.40, 39.90], [116.41, 39.90], [116.41, 39.91], [116.40, 39.91], [116.40, 39.90]]
    many = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"f{i}", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [square]}}
        for i in range(MAX_FENCES + 1)]}
    with pytest.raises(FenceError, match=str(MAX_FENCES)):
        load_fences(many)
    ring = [[116.40 + 0.01 * (i / MAX_VERTICES), 39.90 + 0.001 * ((i % 2) + i / MAX_VERTICES)]
            for i in range(MAX_VERTICES + 2)]
    big = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "big", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    with pytest.raises(FenceError, match="vertices"):
        load_fences(big)
