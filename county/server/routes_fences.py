"""Fences through the server: the county's stored geofences, and pushing them to boxes as a signed geofence.set.

GET /api/v1/fences lists the stored fences; PUT /api/v1/fences/{id} stores one fence ({name, feature, crs}:
a GeoJSON Feature, a Polygon / MultiPolygon or a circle = Point + `properties.radius_m`), DELETE removes it.
The feature is checked with the console's own checks (county/fences.py, `build_geofence_data`) when it is
stored, so a fence the console would refuse is refused here (422, `reason: invalid_feature`, the detail says
where). It is stored with `id` = the path id and `properties.name` = the name (what the box shows).

POST /api/v1/fences/push {fences: [ids], assign: {wearer: [fence ids]}, to: [targets]} builds the data of
a `geofence.set` (contract section 5) from the stored fences with the same function `village county fences`
uses, signs it with the county key and publishes it QoS 1, not retained, to each target's cmd topic, as a
broadcast is (county/server/routes_common.py: the same signing key, target resolution, scope refusal and
publisher). The push is stored in `fence_pushes` (id = the command id, which the boxes' receipts name);
GET /api/v1/fences/push/{id} shows one row per targeted box inside the caller's scope: its latest receipt
(`applied`, `rejected` with the reason, ...) or `no_answer`. POST /api/v1/fences/push/{id}/resend publishes the
same signed token again to the cmd topic of each targeted box (inside the caller's scope) that has not
answered, as a broadcast's resend does (409 once the command has expired or for a push stored before
tokens were kept, 503 if the broker does not take it); audited as `fence.push.resend`.

One geofence.set carries one `crs`: the fences of a push must share it (else 422 `mixed_crs`); the boxes
convert GCJ-02 / BD-09 to WGS-84 themselves. A geofence.set replaces the box's county fences as a whole.

Roles: `fences.read` (every role) lists fences and reads pushes; `fence.edit` (admin, operator) stores and
deletes; `fence.push` (admin, operator) pushes. Fences carry no region: a county-wide user may change any
fence, a township or village user only the fences they created. A push must reach boxes inside the
caller's scope only (403, audited as `fence.push.refused`). Every change and push is in the audit log.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from county import fences as fence_files
from county import push
from county.server.routes_common import (
    ApiError,
    Parts,
    api,
    audit_append,
    authorize,
    in_scope,
    parse_targets,
    parts,
    place,
    publish_all,
    reach_boxes,
    reaching,
    read_json,
    signing_key,
    topics_of,
)
from county.store.tables import fence_pushes as pushes_t
from county.store.tables import fences as fences_t
from county.store.tables import receipts as receipts_t

NO_ANSWER = "no_answer"
FENCE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_NAME_CHARS = 200
MAX_FEATURE_BYTES = fence_files.MAX_FILE_BYTES  # one fence may be as large as the console's whole file
MAX_PUSH_FENCES = 200
MAX_WEARERS = 5000
FENCE_KEYS = frozenset({"name", "feature", "crs"})
PUSH_KEYS = frozenset({"fences", "assign", "to", "ttl_s", "force"})


def _fence_id(request: Request) -> str:
    fid = str(request.path_params["id"])
    if not FENCE_ID_RE.fullmatch(fid):
        raise ApiError(400, "a fence id is 1-64 characters of A-Z a-z 0-9 _ . -")
    return fid


def fence_json(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "feature": row["feature"], "crs": row["crs"],
            "created_by": row["created_by"], "updated_at": row["updated_at"]}


def _feature(fid: str, name: str, feature: Any, crs: str) -> dict[str, Any]:
    """The feature as stored (id = the path id, properties.name = the name), checked as the console checks a
    file; ApiError 422 `invalid_feature` naming the problem."""
    if not isinstance(feature, dict):
        raise ApiError(422, "feature: not a GeoJSON Feature", reason="invalid_feature")
    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise ApiError(422, "feature.properties: expected an object", reason="invalid_feature")
    props = {k: v for k, v in props.items() if k != "id"} | {"name": name}
    stored = {**feature, "id": fid, "properties": props}
    try:
        fence_files.build_geofence_data({"type": "FeatureCollection", "features": [stored]}, crs)
    except fence_files.FenceFileError as exc:
        text = str(exc).removeprefix("features[0]").lstrip(": ")
        raise ApiError(422, f"feature {text}" if text.startswith("(") else f"feature: {text}",
                       reason="invalid_feature") from None
    return stored


def _may_change(user: Any, row: Any) -> bool:
    """A county-wide user may change any fence; a scoped one only the fences they created."""
    return user.scope is None or row["created_by"] == user.name


async def _load_fence(conn: Any, fid: str) -> Any:
    return (await conn.execute(select(fences_t).where(fences_t.c.id == fid))).mappings().first()


# --------------------------------------------------------------------------------------------- fences
@api
async def list_fences(request: Request) -> Response:
    authorize(request, "fences.read")
    p = parts(request)
    async with p.db.connect() as conn:
        rows = (await conn.execute(select(fences_t).order_by(fences_t.c.id))).mappings().all()
    return JSONResponse([fence_json(r) for r in rows])


@api
async def put_fence(request: Request) -> Response:
    user = authorize(request, "fence.edit")
    p = parts(request)
    fid = _fence_id(request)
    body = await read_json(request)
    unknown = sorted(set(body) - FENCE_KEYS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown[:8])}")
    name = body.get("name", fid)
    if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME_CHARS:
        raise ApiError(400, f"name must be a string of 1..{MAX_NAME_CHARS} characters")
    crs = body.get("crs", "WGS84")
    if crs not in fence_files.CRS_NAMES:
        raise ApiError(422, f"crs must be one of {', '.join(fence_files.CRS_NAMES)}", reason="invalid_crs")
    if "feature" not in body:
        raise ApiError(400, "feature is required (a GeoJSON Feature)")
    size = len(json.dumps(body["feature"], ensure_ascii=False).encode())
    if size > MAX_FEATURE_BYTES:
        raise ApiError(413, f"feature is {size} bytes, over {MAX_FEATURE_BYTES}; simplify the fence")
    feature = _feature(fid, name, body["feature"], str(crs))
    now = p.now_ms()
    async with p.db.begin() as conn:
        old = await _load_fence(conn, fid)
        if old is not None and not _may_change(user, old):
            raise ApiError(403, f"fence {fid} was made by {old['created_by']}; a {user.scope} user changes only "
                                "their own fences")
        values = {"name": name, "feature": feature, "crs": crs, "updated_at": now}
        try:
            if old is None:
                await conn.execute(fences_t.insert().values(id=fid, created_by=user.name, **values))
            else:
                await conn.execute(update(fences_t).where(fences_t.c.id == fid).values(**values))
        except IntegrityError:
            raise ApiError(409, "the fence was created meanwhile; look again") from None
        await audit_append(conn, user.name, "fence.create" if old is None else "fence.update", fid,
                           {"name": name, "crs": crs, "geometry": feature["geometry"]["type"]})
        row = await _load_fence(conn, fid)
    return JSONResponse(fence_json(row), status_code=201 if old is None else 200)


@api
async def delete_fence(request: Request) -> Response:
    user = authorize(request, "fence.edit")
    p = parts(request)
    fid = _fence_id(request)
    async with p.db.begin() as conn:
        old = await _load_fence(conn, fid)
        if old is None:
            raise ApiError(404, "no such fence")
        if not _may_change(user, old):
            raise ApiError(403, f"fence {fid} was made by {old['created_by']}; a {user.scope} user changes only "
                                "their own fences")
        await conn.execute(delete(fences_t).where(fences_t.c.id == fid))
        await audit_append(conn, user.name, "fence.delete", fid, {"name": old["name"]})
    return JSONResponse({"ok": True})


# ---------------------------------------------------------------------------------------------- pushes
def _id_list(value: Any, what: str, most: int) -> list[str]:
    if (not isinstance(value, list) or not value or len(value) > most
            or not all(isinstance(v, str) and FENCE_ID_RE.fullmatch(v) for v in value)):
        raise ApiError(400, f"{what} must be a list of 1..{most} fence ids")
    return list(dict.fromkeys(value))


def _assign(value: Any, ids: list[str]) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_WEARERS:
        raise ApiError(400, f"assign must be an object {{wearer: [fence ids]}} of at most {MAX_WEARERS} wearers")
    out: dict[str, list[str]] = {}
    for wearer, fence_ids in value.items():
        if not 0 < len(wearer) <= 64:
            raise ApiError(400, "assign: a wearer id is 1-64 characters")
        out[wearer] = _id_list(fence_ids, f"assign.{wearer}", MAX_PUSH_FENCES)
        unknown = [f for f in out[wearer] if f not in ids]
        if unknown:
            raise ApiError(422, f"assign.{wearer}: fence id(s) {', '.join(unknown)} are not in this push's fences",
                           reason="unknown_fence", unknown=unknown)
    return out


@api
async def push_fences(request: Request) -> Response:
    user = authorize(request, "fence.push")
    p = parts(request)
    body = await read_json(request)
    unknown = sorted(set(body) - PUSH_KEYS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown[:8])}")
    ids = _id_list(body.get("fences"), "fences", MAX_PUSH_FENCES)
    assign = _assign(body.get("assign"), ids)
    targets = parse_targets(body.get("to"))
    ttl = body.get("ttl_s", push.DEFAULT_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= push.MAX_TTL_S:
        raise ApiError(400, f"ttl_s must be 1..{push.MAX_TTL_S}")
    async with p.db.connect() as conn:
        rows = {r["id"]: r for r in (await conn.execute(
            select(fences_t).where(fences_t.c.id.in_(ids)))).mappings()}
    missing = [f for f in ids if f not in rows]
    if missing:
        raise ApiError(422, f"no stored fence {', '.join(missing)}", reason="unknown_fence", unknown=missing)
    crs_of = sorted({rows[f]["crs"] for f in ids})
    if len(crs_of) > 1:
        raise ApiError(422, f"one push carries one crs; these fences use {', '.join(crs_of)}", reason="mixed_crs")
    boxes = await reach_boxes(p, user, targets, force=body.get("force") is True, refused="fence.push.refused")
    try:
        data = fence_files.build_geofence_data(
            {"type": "FeatureCollection", "features": [rows[f]["feature"] for f in ids]}, crs_of[0], assign)
    except fence_files.FenceFileError as exc:  # stored fences were checked; a changed check may still refuse
        raise ApiError(422, str(exc), reason="invalid_feature") from None
    key, kid = await signing_key(request)
    payload = push.command("geofence.set", data, targets, now=p.now_s(), ttl_s=ttl)
    try:
        token = push.sign(payload, key, kid)
    except push.PushError as exc:
        raise ApiError(422, str(exc), reason="too_large") from None
    pid = str(payload["id"])
    async with p.db.begin() as conn:
        await conn.execute(pushes_t.insert().values(
            id=pid, fences={"ids": ids, "crs": data["crs"], "collection": data["fences"]}, assign=data["assign"],
            targets=targets, boxes=boxes, created_by=user.name, created_at=p.now_ms(),
            token=token.decode("ascii"), exp=int(payload["exp"])))
        await audit_append(conn, user.name, "fence.push", pid,
                           {"fences": ids, "crs": data["crs"], "wearers": len(assign), "targets": targets,
                            "boxes": len(boxes)})
    t = topics_of(p)
    failure = await publish_all(p, token, [push.target_topic(x, t) for x in payload["to"]])
    if failure is not None:
        async with p.db.begin() as conn:
            await audit_append(conn, user.name, "fence.push.failed", pid, {"error": failure})
        return JSONResponse({"id": pid, "state": "publish_failed", "boxes": boxes,
                             "error": f"the broker did not take it: {failure} (push again)"}, status_code=503)
    return JSONResponse({"id": pid, "state": "sent", "boxes": boxes}, status_code=201)


def push_json(row: Any, got: dict[str, Any], p: Parts, scope: str | None) -> dict[str, Any]:
    receipts = []
    for box in row["boxes"]:
        if not in_scope(p.regions, scope, box):
            continue
        r = got.get(box)
        receipts.append({"box": box, "name": place(p.regions, box)[0], "state": r["state"] if r else NO_ANSWER,
                         "reason": r["reason"] if r else None, "ts": r["ts"] if r else None})
    fences = row["fences"]
    return {"id": row["id"], "fences": fences["ids"], "crs": fences["crs"], "collection": fences["collection"],
            "assign": row["assign"], "targets": row["targets"], "created_by": row["created_by"],
            "created_at": row["created_at"], "receipts": receipts}


@api
async def get_push(request: Request) -> Response:
    user = authorize(request, "fences.read")
    p = parts(request)
    pid = str(request.path_params["id"])
    async with p.db.connect() as conn:
        row = (await conn.execute(select(pushes_t).where(pushes_t.c.id == pid))).mappings().first()
        got = {} if row is None else {r["box"]: r for r in (await conn.execute(
            select(receipts_t).where(receipts_t.c.cmd == pid))).mappings()}
    return JSONResponse(push_json(reaching(p, user, row, "fence push", short="push"), got, p, user.scope))


@api
async def resend_push(request: Request) -> Response:
    user = authorize(request, "fence.push")
    p = parts(request)
    pid = str(request.path_params["id"])
    async with p.db.connect() as conn:
        row = (await conn.execute(select(pushes_t).where(pushes_t.c.id == pid))).mappings().first()
        answered = set() if row is None else {r[0] for r in (await conn.execute(
            select(receipts_t.c.box).where(receipts_t.c.cmd == pid))).all()}
    reaching(p, user, row, "fence push", short="push")
    mine = [b for b in row["boxes"] if in_scope(p.regions, user.scope, b)]
    if row["token"] is None:
        raise ApiError(409, "this push was stored before pushes kept their token; push the fences again",
                       state="no_token")
    if row["exp"] is not None and row["exp"] <= p.now_s():
        raise ApiError(409, "the signed command has expired; push the fences again", state="expired")
    silent = [b for b in mine if b not in answered]
    t = topics_of(p)
    failure = await publish_all(p, row["token"].encode("ascii"), [t.box_cmd(b) for b in silent]) if silent else None
    async with p.db.begin() as conn:
        await audit_append(conn, user.name, "fence.push.resend", pid,
                           {"boxes": silent[:200], "count": len(silent), "error": failure})
    if failure is not None:
        raise ApiError(503, f"the broker did not take it: {failure}")
    return JSONResponse({"id": pid, "resent_to": silent})


def routes() -> list[Route]:
    return [
        Route("/api/v1/fences", list_fences, methods=["GET"]),
        Route("/api/v1/fences/push", push_fences, methods=["POST"]),
        Route("/api/v1/fences/push/{id}", get_push, methods=["GET"]),
        Route("/api/v1/fences/push/{id}/resend", resend_push, methods=["POST"]),
        Route("/api/v1/fences/{id}", put_fence, methods=["PUT"]),
        Route("/api/v1/fences/{id}", delete_fence, methods=["DELETE"]),
    ]
