"""The body of `village county fences --to ... --file F.geojson [--crs GCJ02] [--assign W1=f1,f2]`.

`build_geofence_command_data(path, crs, assign)` reads the GeoJSON file and returns the `data` of a
`geofence.set` command (contract section 5): `{"fences": FeatureCollection, "crs": ..., "assign": {...}}`.
The console (county/cli.py) signs and publishes it.

The checks here are the ones a person at the county can fix before anything is sent (a file that is
not a FeatureCollection, a fence without an id, a circle without radius_m, an assignment naming a
fence that is not in the file). The box validates everything again (agent/wearables/fences.py) and
answers `failed` with the reason; this module stays independent of the agent's internals, as county/
imports only agent.protocol.

The coordinates are sent exactly as drawn, with their `crs`: each box converts GCJ-02 / BD-09 to
WGS-84 itself, so the file the county keeps and what the boxes received are the same document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.i18n import N_

CRS_NAMES = ("WGS84", "GCJ02", "BD09")
MAX_FILE_BYTES = 512 * 1024  # a command travels over MQTT to every box; a village's fences are a few kB
_GEOMETRIES = ("Polygon", "MultiPolygon", "Point")


class FenceFileError(ValueError):
    """The GeoJSON file or the assignment cannot make a geofence.set; `str()` says where and why."""


def _position_ok(p: Any) -> bool:
    return (isinstance(p, list) and len(p) >= 2
            # an int is finite (math.isfinite would convert a huge one to float and overflow)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))
                    for v in p[:2])
            and -180 <= p[0] <= 180 and -90 <= p[1] <= 90)


def _check_rings(rings: Any, where: str) -> None:
    if not isinstance(rings, list) or not rings:
        raise FenceFileError(N_("{where}: a polygon is a non-empty list of rings", where=where))
    for i, ring in enumerate(rings):
        if not isinstance(ring, list) or not all(_position_ok(p) for p in ring):
            raise FenceFileError(N_("{where}[{i}]: a ring is a list of [lon, lat] positions", where=where, i=i))
        if len({tuple(p[:2]) for p in ring}) < 3:
            raise FenceFileError(N_("{where}[{i}]: a ring needs at least 3 distinct positions", where=where, i=i))


def _check_feature(feature: Any, i: int) -> str:
    where = f"features[{i}]"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise FenceFileError(N_("{where}: not a GeoJSON Feature", where=where))
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise FenceFileError(N_("{where}.properties: expected an object", where=where))
    fid = feature.get("id", props.get("id"))
    if isinstance(fid, bool) or not isinstance(fid, (str, int)) or not 0 < len(str(fid)) <= 64:
        raise FenceFileError(N_("{where}: a fence needs an id (Feature.id or properties.id, 1-64 characters)",
                                where=where))
    geom = feature.get("geometry")
    gtype = geom.get("type") if isinstance(geom, dict) else None
    if gtype not in _GEOMETRIES:
        raise FenceFileError(N_("{where} ({fid}): geometry must be one of {value}, got {gtype!r}",
                                where=where, fid=fid, value=', '.join(_GEOMETRIES), gtype=gtype))
    assert isinstance(geom, dict)
    coords = geom.get("coordinates")
    if gtype == "Point":
        radius = props.get("radius_m")
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 < radius <= 100_000:
            raise FenceFileError(N_("{where} ({fid}): a circle is a Point with properties.radius_m > 0 (metres)",
                                    where=where, fid=fid))
        if not _position_ok(coords):
            raise FenceFileError(N_("{where} ({fid}): a Point's coordinates are [lon, lat]", where=where, fid=fid))
    elif gtype == "Polygon":
        _check_rings(coords, f"{where} ({fid}).geometry.coordinates")
    else:
        if not isinstance(coords, list) or not coords:
            raise FenceFileError(N_("{where} ({fid}): a MultiPolygon needs at least one polygon", where=where, fid=fid))
        for j, poly in enumerate(coords):
            _check_rings(poly, f"{where} ({fid}).geometry.coordinates[{j}]")
    return str(fid)


def build_geofence_command_data(path: Path | str, crs: str = "WGS84",
                                assign: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """GeoJSON file + crs + {wearer: [fence ids]} -> the `data` of a geofence.set command."""
    path = Path(path)
    if crs not in CRS_NAMES:
        raise FenceFileError(N_("crs must be one of {value}, got {crs!r}", value=', '.join(CRS_NAMES), crs=crs))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FenceFileError(N_("file does not exist")) from None
    if len(raw) > MAX_FILE_BYTES:
        raise FenceFileError(N_("file is larger than {value} kB; simplify the fences", value=MAX_FILE_BYTES // 1024))
    try:
        doc = json.loads(raw.decode("utf-8-sig"))  # editors on Windows write a BOM
    except (UnicodeDecodeError, ValueError) as exc:
        raise FenceFileError(N_("not JSON: {exc}", exc=exc)) from None
    except RecursionError:
        raise FenceFileError(N_("not JSON: nested too deeply")) from None
    return build_geofence_data(doc, crs, assign)


def build_geofence_data(doc: Any, crs: str = "WGS84",
                        assign: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """A parsed GeoJSON FeatureCollection + crs + {wearer: [fence ids]} -> the `data` of a geofence.set
    command (the county server's fence push builds it from its stored fences with this)."""
    if crs not in CRS_NAMES:
        raise FenceFileError(N_("crs must be one of {value}, got {crs!r}", value=', '.join(CRS_NAMES), crs=crs))
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise FenceFileError(N_("expected a GeoJSON FeatureCollection"))
    features = doc.get("features")
    if not isinstance(features, list) or not features:
        raise FenceFileError(N_("the FeatureCollection has no features"))
    ids: list[str] = []
    for i, feature in enumerate(features):
        fid = _check_feature(feature, i)
        if fid in ids:
            raise FenceFileError(N_("features[{i}]: duplicate fence id {fid!r}", i=i, fid=fid))
        ids.append(fid)
    out_assign: dict[str, list[str]] = {}
    for wearer, fence_ids in (assign or {}).items():
        missing = [f for f in fence_ids if f not in ids]
        if missing:
            raise FenceFileError(N_("--assign {wearer}: fence id(s) {missing} are not in the file (it has {ids})",
                                    wearer=wearer, missing=missing, ids=ids))
        out_assign[wearer] = list(dict.fromkeys(fence_ids))
    # only the members the box reads: foreign members (e.g. "crs", "name") are dropped, not forwarded
    fences = {"type": "FeatureCollection", "features": features}
    return {"fences": fences, "crs": crs, "assign": out_assign}
