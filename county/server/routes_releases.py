"""Releases and rollouts on the county server (issue 17; docs/updates.md, county/rollout.py).

Upload (admin, `release.manage`), resumable and without re-sending what the server holds:

    POST /api/v1/releases {"manifest": "<manifest.jws>"}   -> {version, manifest_sha256, missing: [files]}
    PUT  /api/v1/releases/{version}/wheels/{file}           the wheel as the body; size and sha256 checked
    GET  /api/v1/releases                                   every release, `complete` once all wheels are in

The server checks the manifest's form (agent.release.parse_manifest) and every wheel against it; the
*signature* is the boxes' to check, with their own `[trust] release_keys`: the county never needs the
release key, and cannot make a box take what the release key did not sign.

Download (what the boxes fetch; Range requests answered 206), only on the boxes' listener (box_app(),
`[server] box_listen`), whose TLS handshake requires a certificate signed by `[server] box_client_ca`:

    GET /releases/{version}/manifest.jws
    GET /releases/{version}/wheels/{file}

The browser's port does not serve them. These are the signed files every box gets; their integrity is the
manifest signature and the hashes; the client certificate keeps them (and the server's work) to the county's
boxes. Uvicorn's ASGI scope does not carry the peer certificate, hence a listener of their own.

Rollouts (`release.manage`):

    POST /api/v1/rollouts {"version", "to": [targets], "pilot": N | [box ids], "wave_size", "max_failure_pct",
                           "wave_timeout_s", "base_url", "force"}   -> the status, pilot wave sent
    GET  /api/v1/rollouts, GET /api/v1/rollouts/{id}                 -> status (per box: see county/rollout.py)
    POST /api/v1/rollouts/{id}/halt

`base_url` is the https:// address boxes reach this server at (their `[update] server`); default: the
host the request came to at the `box_listen` port (the request's own address without a box listener).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.protocol import jws
from agent.release import VERSION_RE, WHEEL_FILE_RE, ManifestError, parse_manifest
from county import push
from county import rollout as ro
from county.server.routes_common import (
    ApiError,
    Parts,
    api,
    audit_append,
    authorize,
    now_ms,
    parse_targets,
    parts,
    publish_all,
    reach_boxes,
    read_json,
    signing_key,
    topics_of,
)
from county.store.tables import release_files as files_t
from county.store.tables import releases as releases_t
from county.store.tables import rollouts as rollouts_t

ACTION = "release.manage"
MAX_MANIFEST_CHARS = 256 * 1024
RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)\Z")
ROLLOUT_KEYS = frozenset({"version", "to", "pilot", "wave_size", "max_failure_pct", "wave_timeout_s", "base_url",
                          "force"})


def _version(request: Request) -> str:
    v = str(request.path_params["version"])
    if not VERSION_RE.fullmatch(v):
        raise ApiError(400, "a release version is dotted integers (1.4.2)")
    return v


async def _release(conn: Any, version: str) -> Any:
    return (await conn.execute(select(releases_t).where(releases_t.c.version == version))).mappings().first()


async def _held(conn: Any, digests: list[str]) -> set[str]:
    if not digests:
        return set()
    return {r[0] for r in (await conn.execute(select(files_t.c.sha256).where(files_t.c.sha256.in_(digests)))).all()}


def release_json(row: Any, held: set[str]) -> dict[str, Any]:
    missing = [w["file"] for w in row["wheels"] if w["sha256"] not in held]
    return {"version": row["version"], "manifest_sha256": row["manifest_sha256"], "arch": row["arch"],
            "python": row["python"], "min_from": row["min_from"], "size": row["size"], "wheels": row["wheels"],
            "uploaded_by": row["uploaded_by"], "uploaded_at": row["uploaded_at"], "missing": missing,
            "complete": not missing}


# ------------------------------------------------------------------------------------------- releases
@api
async def upload_manifest(request: Request) -> Response:
    user = authorize(request, ACTION)
    p = parts(request)
    body = await read_json(request)
    token = body.get("manifest")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_MANIFEST_CHARS:
        raise ApiError(400, "manifest must be the manifest.jws text")
    token = token.strip()
    payload = jws.unverified_payload(token)
    if payload is None:
        raise ApiError(422, "manifest is not a JWS compact token", reason="bad_manifest")
    try:
        m = parse_manifest(payload)
    except ManifestError as exc:
        raise ApiError(422, exc.detail, reason=exc.reason) from None
    digest = hashlib.sha256(token.encode("ascii", "replace")).hexdigest()
    wheels = [{"file": w.file, "sha256": w.sha256, "size": w.size, "project": w.project} for w in m.wheels]
    async with p.db.begin() as conn:
        old = await _release(conn, m.version)
        if old is not None and old["manifest_sha256"] != digest:
            raise ApiError(409, f"release {m.version} is already uploaded with another manifest", reason="exists")
        if old is None:
            try:
                await conn.execute(releases_t.insert().values(
                    version=m.version, manifest=token, manifest_sha256=digest, arch=m.arch, python=m.python,
                    min_from=m.min_from, wheels=wheels, size=sum(w.size for w in m.wheels), uploaded_by=user.name,
                    uploaded_at=p.now_ms()))
            except IntegrityError:
                raise ApiError(409, "uploaded meanwhile; look again") from None
            await audit_append(conn, user.name, "release.upload", m.version,
                               {"sha256": digest, "wheels": len(wheels), "arch": m.arch})
        row = await _release(conn, m.version)
        held = await _held(conn, [w.sha256 for w in m.wheels])
    return JSONResponse(release_json(row, held), status_code=201 if old is None else 200)


@api
async def upload_wheel(request: Request) -> Response:
    authorize(request, ACTION)
    p = parts(request)
    version, file = _version(request), str(request.path_params["file"])
    async with p.db.connect() as conn:
        row = await _release(conn, version)
    if row is None:
        raise ApiError(404, "no such release: upload its manifest first")
    entry = next((w for w in row["wheels"] if w["file"] == file), None)
    if entry is None:
        raise ApiError(404, f"{file[:100]} is not in release {version}'s manifest")
    data = await request.body()
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ApiError(422, f"{file} is not the wheel the manifest names (size or sha256)", reason="hash_mismatch")
    async with p.db.begin() as conn:
        await conn.execute(p.db.insert_ignore(files_t).values(sha256=entry["sha256"], size=len(data), data=data))
        held = await _held(conn, [w["sha256"] for w in row["wheels"]])
    return JSONResponse(release_json(row, held))


@api
async def list_releases(request: Request) -> Response:
    authorize(request, ACTION)
    p = parts(request)
    async with p.db.connect() as conn:
        rows = (await conn.execute(select(releases_t).order_by(releases_t.c.uploaded_at.desc()))).mappings().all()
        held = await _held(conn, sorted({str(w["sha256"]) for r in rows for w in r["wheels"]}))
    return JSONResponse([release_json(r, held) for r in rows])


def _ranged(request: Request, data: bytes, media: str) -> Response:
    rng = request.headers.get("range")
    m = RANGE_RE.fullmatch(rng.strip()) if rng else None
    if m is None:
        return Response(data, media_type=media, headers={"Accept-Ranges": "bytes"})
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else len(data) - 1
    if start >= len(data) or end < start:
        return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
    end = min(end, len(data) - 1)
    return Response(data[start:end + 1], status_code=206, media_type=media,
                    headers={"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"})


async def get_manifest(request: Request) -> Response:
    p = parts(request)
    try:
        version = _version(request)
    except ApiError as exc:
        return JSONResponse({"error": "bad_request", "detail": exc.message}, status_code=400)
    async with p.db.connect() as conn:
        row = await _release(conn, version)
    if row is None:
        return JSONResponse({"error": "not_found", "detail": "no such release"}, status_code=404)
    return _ranged(request, row["manifest"].encode("ascii"), "application/jose")


async def get_wheel(request: Request) -> Response:
    p = parts(request)
    file = str(request.path_params["file"])
    try:
        version = _version(request)
    except ApiError as exc:
        return JSONResponse({"error": "bad_request", "detail": exc.message}, status_code=400)
    if not WHEEL_FILE_RE.fullmatch(file):
        return JSONResponse({"error": "not_found", "detail": "no such wheel"}, status_code=404)
    async with p.db.connect() as conn:
        row = await _release(conn, version)
        entry = None if row is None else next((w for w in row["wheels"] if w["file"] == file), None)
        data = None if entry is None else (await conn.execute(
            select(files_t.c.data).where(files_t.c.sha256 == entry["sha256"]))).scalar()
    if data is None:
        return JSONResponse({"error": "not_found", "detail": "no such wheel (or not uploaded yet)"}, status_code=404)
    return _ranged(request, bytes(data), "application/octet-stream")


# ------------------------------------------------------------------------------------------- rollouts
def _int(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, f"{name} must be an integer {lo}..{hi}")
    return value


def publisher(request: Any, p: Parts, release: Any, url: str) -> ro.Publish:
    async def publish(boxes: list[str], targets: list[str], cmd_id: str) -> str | None:
        try:
            key, kid = await signing_key(request)
        except ApiError as exc:
            return exc.message
        payload = ro.update_command(release["version"], release["manifest_sha256"], url, targets, p.now_s(), cmd_id)
        token = push.sign(payload, key, kid)
        t = topics_of(p)
        return await publish_all(p, token, [t.box_cmd(b) for b in boxes])
    return publish


def _box_base(request: Request) -> str:
    """Where the boxes fetch by default: the host this request came to, at the boxes' port."""
    port = parts(request).config.server.box_port
    if port is None:
        return str(request.base_url)
    host = request.url.hostname or "localhost"
    return f"https://{f'[{host}]' if ':' in host else host}:{port}/"


async def _status(request: Request, rid: str) -> dict[str, Any]:
    p = parts(request)
    async with p.db.connect() as conn:
        row = (await conn.execute(select(rollouts_t).where(rollouts_t.c.id == rid))).mappings().first()
        release = None if row is None else await _release(conn, row["version"])
    if row is None or release is None:
        raise ApiError(404, "no such rollout")
    status = await ro.advance(p.db, rid, publisher(request, p, release, row["url"]), p.now_ms())
    assert status is not None
    return status


@api
async def start_rollout(request: Request) -> Response:
    user = authorize(request, ACTION)
    p = parts(request)
    body = await read_json(request)
    unknown = sorted(set(body) - ROLLOUT_KEYS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown[:8])}")
    version = body.get("version")
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise ApiError(400, "version must be an uploaded release's version")
    targets = parse_targets(body.get("to"))
    wave = _int(body, "wave_size", 50, 1, 10000)
    pct = _int(body, "max_failure_pct", 10, 0, 100)
    timeout = _int(body, "wave_timeout_s", 3600, 60, 7 * 86400)
    base = body.get("base_url", _box_base(request))
    if not isinstance(base, str) or not base.startswith("https://") or len(base) > 400:
        raise ApiError(400, "base_url must be the https:// address boxes reach this server at")
    async with p.db.connect() as conn:
        release = await _release(conn, version)
        held = set() if release is None else await _held(conn, [w["sha256"] for w in release["wheels"]])
    if release is None:
        raise ApiError(404, f"no release {version}: upload it first")
    if not release_json(release, held)["complete"]:
        raise ApiError(409, f"release {version} still misses wheels", reason="incomplete")
    boxes = await reach_boxes(p, user, targets, force=body.get("force") is True, refused="rollout.refused")
    pilot_in = body.get("pilot", 1)
    if isinstance(pilot_in, list):
        if not pilot_in or not all(isinstance(b, str) and b in boxes for b in pilot_in):
            raise ApiError(400, "pilot must list boxes the targets reach")
        pilot = list(dict.fromkeys(pilot_in))
    elif isinstance(pilot_in, int) and not isinstance(pilot_in, bool) and 1 <= pilot_in <= len(boxes):
        pilot = boxes[:pilot_in]
    else:
        raise ApiError(400, f"pilot must be 1..{len(boxes)} or a list of box ids")
    ordered = pilot + [b for b in boxes if b not in pilot]
    rid = f"ro-{uuid.uuid4().hex[:16]}"
    url = f"{base.rstrip('/')}/releases/{version}/manifest.jws"
    now = p.now_ms()
    async with p.db.begin() as conn:
        await conn.execute(rollouts_t.insert().values(
            id=rid, version=version, targets=targets, boxes=ordered, pilot=len(pilot), wave_size=wave,
            max_failure_pct=pct, wave_timeout_s=timeout, url=url, waves=[], state="pilot", reason=None,
            created_by=user.name, created_at=now, updated_at=now))
        await audit_append(conn, user.name, "rollout.start", rid,
                           {"version": version, "targets": targets, "boxes": len(ordered), "pilot": pilot[:50],
                            "max_failure_pct": pct})
    return JSONResponse(await _status(request, rid), status_code=201)


@api
async def get_rollout(request: Request) -> Response:
    authorize(request, ACTION)
    return JSONResponse(await _status(request, str(request.path_params["id"])))


@api
async def list_rollouts(request: Request) -> Response:
    authorize(request, ACTION)
    p = parts(request)
    async with p.db.connect() as conn:
        rows = (await conn.execute(select(rollouts_t.c.id, rollouts_t.c.version, rollouts_t.c.state,
                                          rollouts_t.c.created_at).order_by(rollouts_t.c.created_at.desc())
                                   .limit(200))).mappings().all()
    return JSONResponse([dict(r) for r in rows])


@api
async def halt_rollout(request: Request) -> Response:
    user = authorize(request, ACTION)
    p = parts(request)
    rid = str(request.path_params["id"])
    async with p.db.begin() as conn:
        n = (await conn.execute(update(rollouts_t).where(rollouts_t.c.id == rid, rollouts_t.c.state.in_(ro.ACTIVE))
                                .values(state="halted", reason=f"halted by {user.name}", rev=rollouts_t.c.rev + 1,
                                        updated_at=p.now_ms()))).rowcount
        if n:
            await audit_append(conn, user.name, "rollout.halt", rid, {})
    if not n:
        raise ApiError(409, "no such active rollout", reason="not_active")
    return JSONResponse(await _status(request, rid))


async def run(app: Any, stop: Any, tick_s: float = ro.TICK_S) -> None:
    """`village county serve`'s loop: every active rollout judged and its next wave sent every tick_s, so a
    rollout halts by itself and moves on without anyone reading its status."""
    holder = SimpleNamespace(app=app)  # what signing_key() reads: app.state
    st = app.state
    p = Parts(config=st.config, db=st.db, hub=getattr(st, "hub", None), mqtt=getattr(st, "mqtt", None),
              regions=getattr(st, "regions", None), clock=lambda: getattr(st, "clock", now_ms)())
    releases: dict[str, Any] = {}

    def publish_for(row: Any) -> ro.Publish:
        async def publish(boxes: list[str], targets: list[str], cmd_id: str) -> str | None:
            if row["version"] not in releases:
                async with p.db.connect() as conn:
                    releases[row["version"]] = await _release(conn, row["version"])
            return await publisher(holder, p, releases[row["version"]], row["url"])(boxes, targets, cmd_id)
        return publish

    await ro.run_rollouts(p.db, publish_for, p.now_ms, stop, tick_s)


def routes() -> list[Route]:
    return [
        Route("/api/v1/releases", upload_manifest, methods=["POST"]),
        Route("/api/v1/releases", list_releases, methods=["GET"]),
        Route("/api/v1/releases/{version}/wheels/{file}", upload_wheel, methods=["PUT"]),
        Route("/api/v1/rollouts", start_rollout, methods=["POST"]),
        Route("/api/v1/rollouts", list_rollouts, methods=["GET"]),
        Route("/api/v1/rollouts/{id}", get_rollout, methods=["GET"]),
        Route("/api/v1/rollouts/{id}/halt", halt_rollout, methods=["POST"]),
    ]


def box_routes() -> list[Route]:
    """What the boxes fetch: served only by box_app(), never on the browser's port."""
    return [
        Route("/releases/{version}/manifest.jws", get_manifest, methods=["GET"]),
        Route("/releases/{version}/wheels/{file}", get_wheel, methods=["GET"]),
    ]


def box_app(app: Any) -> Starlette:
    """The boxes' app (`[server] box_listen`): box_routes() and nothing else, over the main app's database
    and config. The listener serving it requires a client certificate signed by `box_client_ca` (the TLS
    handshake refuses any other), so no route here needs a session: there is no login, no API."""
    from county.web.security import SecurityHeaders

    box = Starlette(routes=box_routes(), middleware=[Middleware(SecurityHeaders)])
    for name in ("config", "db", "clock"):
        setattr(box.state, name, getattr(app.state, name))
    return box
