"""What the web console's map needs: the tile layer and the county's outline, one alarm in full, the wearer's
track around it, and the wearers' latest positions.

GET /api/v1/map: `{"tiles": {...}, "outline": GeoJSON | null, "outline_source": "file" | "points" | null,
"places": [...]}`. `tiles` is the [map] section made into what Leaflet needs (`kind`, `crs` = the datum
the tiles are drawn in: "GCJ02" for 高德, so the page shifts WGS-84 points before drawing them, and
`layers` = URL templates). The 天地图 key is in the URL: the browser fetches the tiles, so it needs the key
anyway (a 天地图 browser key is bound to the server's domain); no other secret is in the answer. With
`tiles = "none"` `layers` is empty and the page draws the outline and the points on a plain background:
a county intranet with no internet has a working map. The outline is the [map] outline GeoJSON file, else
the convex hull around the regions file's points (townships, villages and boxes with lat/lon, each padded
so a few villages make an area), else null. `places` are
the registered boxes inside the caller's scope that have a position (their own, else their village's).

GET /api/v1/alarms/{id}: one alarm as in the list, plus `data` (the alarm's data), `raw` (the envelope as
received, text), `fences` (the geofence named by a geofence_exit, else the fences last pushed for the
wearer) and `response` ({ack_s, assign_s, resolve_s}: seconds from the alarm's reception to each action).

GET /api/v1/alarms/{id}/track?minutes=60: the wearer's stored positions from `minutes` (1..1440) before
the alarm until now: `{"wearer", "from", "to", "points": [{lat, lon, acc_m, ts, box}]}` (oldest first, at
most 5,000), only from boxes inside the caller's scope.

GET /api/v1/alarms/{id}/assignees: the 网格员 the alarm may be assigned to (enabled gridworkers whose scope
covers the alarm's box): `[{name, display_name, phone}]`, for the alarm page's assign picker. Needs
`alarm.assign`.

GET /api/v1/positions: the latest position of every wearer heard by a box inside the caller's scope.

Roles: /map needs `boxes.read` (every role). An alarm and its track need `alarms.read` and follow the
alarm list's rules: the alarm's box inside the caller's scope, and a gridworker only for an alarm assigned
to them. /positions needs `alarms.read` and is refused to a gridworker (they see the wearers of their
alarms, not everyone's whereabouts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from county.server.config import MapConfig
from county.server.routes_alarms import alarm_json
from county.server.routes_common import ApiError, api, authorize, in_scope, int_param, parts, scope_boxes
from county.store.tables import alarms as alarms_t
from county.store.tables import fence_pushes as pushes_t
from county.store.tables import fences as fences_t
from county.store.tables import messages as messages_t
from county.store.tables import positions as positions_t
from county.store.tables import positions_latest as latest_t
from county.store.tables import users as users_t

log = logging.getLogger("county.routes")

MAX_OUTLINE_BYTES = 4 * 1024 * 1024
TRACK_MAX_POINTS = 5000
TRACK_DEFAULT_MINUTES = 60
PUSHES_SCANNED = 200  # how far back the alarm page looks for the fences last pushed for a wearer
POSITIONS_MAX = 10_000

TIANDITU = ("https://t{s}.tianditu.gov.cn/{layer}_w/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0"
            "&LAYER={layer}&STYLE=default&TILEMATRIXSET=w&FORMAT=tiles&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}"
            "&tk={key}")
AMAP = "https://webrd0{s}.is.autonavi.com/appmaptile?lang=zh_cn&size=1&scale=1&style=8&x={x}&y={y}&z={z}"


def tile_config(m: MapConfig) -> dict[str, Any]:
    """The [map] section as the page's map.js reads it."""
    layers: list[dict[str, str]] = []
    crs = "WGS84"
    attribution = m.attribution
    if m.tiles == "tianditu":
        for layer in ("vec", "cva"):  # the streets, then the Chinese labels over them
            url = TIANDITU.replace("{layer}", layer).replace("{key}", str(m.key))
            layers.append({"url": url, "subdomains": "01234567"})
        attribution = attribution or "© 天地图"
    elif m.tiles == "amap":
        layers.append({"url": AMAP, "subdomains": "1234"})
        crs = "GCJ02"
        attribution = attribution or "© 高德地图"
    elif m.tiles == "custom":
        layers.append({"url": str(m.url), "subdomains": m.subdomains})
        crs = m.crs
    return {"kind": m.tiles, "crs": crs, "layers": layers, "attribution": attribution, "max_zoom": m.max_zoom}


def tile_origins(m: MapConfig) -> list[str]:
    """The origins the page loads tiles from (for the Content-Security-Policy's img-src)."""
    if m.tiles == "tianditu":
        return ["https://*.tianditu.gov.cn"]
    if m.tiles == "amap":
        return ["https://*.is.autonavi.com"]
    if m.tiles == "custom" and m.url:
        from urllib.parse import urlsplit

        parts_ = urlsplit(m.url.replace("{s}", "x"))
        host = parts_.netloc
        if "{s}" in m.url.split("/")[2]:  # a subdomain placeholder: allow the parent domain's hosts
            host = "*." + host.split(".", 1)[1] if "." in host else host
        return [f"{parts_.scheme}://{host}"]
    return []


# --------------------------------------------------------------------------------------------- outline
def _polygon_feature(item: Any) -> bool:
    geom = item.get("geometry") if isinstance(item, dict) and item.get("type") == "Feature" else item
    return isinstance(geom, dict) and geom.get("type") in ("Polygon", "MultiPolygon") \
        and isinstance(geom.get("coordinates"), list)


def read_outline(path: Path) -> dict[str, Any]:
    """The outline file as a FeatureCollection of its Polygon/MultiPolygon features; ValueError saying why."""
    raw = path.read_bytes()
    if len(raw) > MAX_OUTLINE_BYTES:
        raise ValueError(f"over {MAX_OUTLINE_BYTES // (1024 * 1024)} MiB; simplify it")
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {str(exc)[:200]}") from None
    items: list[Any]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        listed = doc.get("features")
        items = listed if isinstance(listed, list) else []
    else:
        items = [doc]
    features = [i if i.get("type") == "Feature" else {"type": "Feature", "properties": {}, "geometry": i}
                for i in items if _polygon_feature(i)]
    if not features:
        raise ValueError("no Polygon or MultiPolygon in it")
    return {"type": "FeatureCollection", "features": features}


def convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Andrew's monotone chain over (lon, lat); the hull counter-clockwise, not closed."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _region_points(regions: Any) -> list[tuple[float, float]]:
    data = getattr(regions, "data", None)
    if data is None:
        return []
    pts: list[tuple[float, float]] = []
    for t in data.townships:
        if t.lat is not None and t.lon is not None:
            pts.append((t.lon, t.lat))
        for v in t.villages:
            if v.lat is not None and v.lon is not None:
                pts.append((v.lon, v.lat))
            pts.extend((b.lon, b.lat) for b in v.boxes if b.lat is not None and b.lon is not None)
    return pts


def _padded(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Each point with a ring of 12 around it (15 % of the points' extent, at least ~1 km), so the hull of a
    few villages is an area around them rather than a sliver between them."""
    if not points:
        return []
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    r = max(0.01, 0.15 * max(max(lons) - min(lons), max(lats) - min(lats)))
    return [(lon + r * math.cos(a * math.pi / 6) / max(0.2, math.cos(math.radians(lat))),
             lat + r * math.sin(a * math.pi / 6)) for lon, lat in points for a in range(12)]


async def outline(request: Request) -> tuple[dict[str, Any] | None, str | None]:
    """(the outline, where it came from), read once per app and kept."""
    st = request.app.state
    cached = getattr(st, "map_outline", None)
    if cached is not None:
        return cached
    got: tuple[dict[str, Any] | None, str | None] = (None, None)
    path = st.config.map.outline
    if path is not None:
        try:
            got = (await asyncio.to_thread(read_outline, Path(path)), "file")
        except (OSError, ValueError) as exc:
            log.warning("[map] outline %s cannot be drawn: %s", json.dumps(str(path)), json.dumps(str(exc)))
    if got[0] is None:
        hull = convex_hull(_padded(_region_points(st.regions)))
        if len(hull) >= 3:
            ring = [[lon, lat] for lon, lat in hull] + [[hull[0][0], hull[0][1]]]
            got = ({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                                "geometry": {"type": "Polygon",
                                                                             "coordinates": [ring]}}]}, "points")
    st.map_outline = got
    return got


def _places(regions: Any, scope: str | None) -> list[dict[str, Any]]:
    data = getattr(regions, "data", None)
    if data is None:
        return []
    out = []
    for t in data.townships:
        for v in t.villages:
            for b in v.boxes:
                lat, lon = (b.lat, b.lon) if b.lat is not None else (v.lat, v.lon)
                if lat is None or lon is None or not in_scope(regions, scope, b.id):
                    continue
                out.append({"box": b.id, "name": b.name or b.id, "village": v.id, "village_name": v.name,
                            "township": t.id, "township_name": t.name, "lat": lat, "lon": lon})
    return out


@api
async def map_config(request: Request) -> Response:
    user = authorize(request, "boxes.read")
    p = parts(request)
    shape, source = await outline(request)
    return JSONResponse({"tiles": tile_config(p.config.map), "outline": shape, "outline_source": source,
                         "places": _places(p.regions, user.scope)})


# ------------------------------------------------------------------------------------------ one alarm
async def _visible_alarm(request: Request) -> tuple[Any, Any]:
    """(user, alarm row) if the caller may see the alarm; ApiError 404/403 otherwise."""
    user = authorize(request, "alarms.read")
    p = parts(request)
    async with p.db.connect() as conn:
        row = (await conn.execute(select(alarms_t).where(alarms_t.c.id == request.path_params["id"]))
               ).mappings().first()
    if row is None:
        raise ApiError(404, "no such alarm")
    if not in_scope(p.regions, user.scope, row["box"]):
        raise ApiError(403, "that alarm's box is outside your scope")
    if str(user.role) == "gridworker" and row["assigned_to"] != user.name:
        raise ApiError(403, "a gridworker sees only the alarms assigned to them")
    return user, row


def response_times(row: Any) -> dict[str, float | None]:
    """Seconds from the alarm reaching the county to each action (None: not done yet)."""
    def since(at: Any) -> float | None:
        return None if at is None else round((int(at) - int(row["received"])) / 1000, 1)

    return {"ack_s": since(row["acked_at"]), "assign_s": since(row["assigned_at"]),
            "resolve_s": since(row["resolved_at"])}


async def _fences_for(conn: Any, row: Any) -> list[dict[str, Any]]:
    ids: list[str] = []
    data = row["data"] if isinstance(row["data"], dict) else {}
    if row["kind"] == "geofence_exit" and isinstance(data.get("fence"), str):
        ids = [data["fence"]]
    elif row["wearer"]:
        pushes = (await conn.execute(select(pushes_t.c.assign).order_by(pushes_t.c.created_at.desc())
                                     .limit(PUSHES_SCANNED))).all()
        for (assign,) in pushes:
            if isinstance(assign, dict) and isinstance(assign.get(row["wearer"]), list):
                ids = [str(f) for f in assign[row["wearer"]]]
                break
    if not ids:
        return []
    found = (await conn.execute(select(fences_t).where(fences_t.c.id.in_(ids)))).mappings().all()
    return [{"id": f["id"], "name": f["name"], "crs": f["crs"], "feature": f["feature"]} for f in found]


@api
async def get_alarm(request: Request) -> Response:
    _user, row = await _visible_alarm(request)
    p = parts(request)
    async with p.db.connect() as conn:
        raw = (await conn.execute(select(messages_t.c.raw).where(messages_t.c.id == row["id"]))).scalar()
        fences = await _fences_for(conn, row)
    out = alarm_json(row, p.regions)
    out.update({"data": row["data"], "raw": raw, "fences": fences, "response": response_times(row)})
    return JSONResponse(out)


@api
async def alarm_track(request: Request) -> Response:
    user, row = await _visible_alarm(request)
    p = parts(request)
    minutes = int_param(request, "minutes", TRACK_DEFAULT_MINUTES, lo=1, hi=1440)
    assert minutes is not None
    start = int(row["ts"]) - minutes * 60_000
    end = max(p.now_ms(), int(row["ts"]))
    points: list[dict[str, Any]] = []
    if row["wearer"]:
        stmt = (select(positions_t).where(positions_t.c.wearer == row["wearer"], positions_t.c.ts >= start,
                                          positions_t.c.ts <= end)
                .order_by(positions_t.c.ts.desc()).limit(TRACK_MAX_POINTS))
        boxes = scope_boxes(p.regions, user.scope)
        if boxes is not None:
            stmt = stmt.where(positions_t.c.box.in_(sorted(boxes)))
        async with p.db.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        points = [{"lat": r["lat"], "lon": r["lon"], "acc_m": r["acc_m"], "ts": r["ts"], "box": r["box"]}
                  for r in reversed(rows)]
    return JSONResponse({"wearer": row["wearer"], "from": start, "to": end, "points": points})


@api
async def assignees(request: Request) -> Response:
    authorize(request, "alarm.assign")
    _user, row = await _visible_alarm(request)
    p = parts(request)
    async with p.db.connect() as conn:
        rows = (await conn.execute(select(users_t.c.name, users_t.c.display_name, users_t.c.phone, users_t.c.scope)
                                   .where(users_t.c.role == "gridworker", users_t.c.disabled.is_(False))
                                   .order_by(users_t.c.name))).mappings().all()
    return JSONResponse([{"name": r["name"], "display_name": r["display_name"], "phone": r["phone"]}
                         for r in rows if in_scope(p.regions, r["scope"], row["box"])])


@api
async def latest_positions(request: Request) -> Response:
    user = authorize(request, "alarms.read")
    if str(user.role) == "gridworker":
        raise ApiError(403, "a gridworker sees the positions of their alarms only")
    p = parts(request)
    stmt = select(latest_t).order_by(latest_t.c.ts.desc()).limit(POSITIONS_MAX)
    boxes = scope_boxes(p.regions, user.scope)
    if boxes is not None:
        stmt = stmt.where(latest_t.c.box.in_(sorted(boxes)))
    async with p.db.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return JSONResponse([{"box": r["box"], "wearer": r["wearer"], "device": r["device"], "lat": r["lat"],
                          "lon": r["lon"], "acc_m": r["acc_m"], "ts": r["ts"]} for r in rows])


def routes() -> list[Route]:
    return [
        Route("/api/v1/map", map_config, methods=["GET"]),
        Route("/api/v1/positions", latest_positions, methods=["GET"]),
        Route("/api/v1/alarms/{id}", get_alarm, methods=["GET"]),
        Route("/api/v1/alarms/{id}/track", alarm_track, methods=["GET"]),
        Route("/api/v1/alarms/{id}/assignees", assignees, methods=["GET"]),
    ]
