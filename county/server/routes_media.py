"""What the compose page asks before it creates a broadcast: a spoken preview, an audio upload fitted to the
box limit, a CAP 1.2 import as a draft, and the target picker (the region tree and the exact boxes a pick
reaches). All need `broadcast.create`; none stores anything or sends anything to a box (the broadcast itself
is still made by POST /api/v1/broadcasts, which checks everything again).

- `POST /api/v1/media/tts-preview` `{"text"}` -> `audio/ogg` (Opus): espeak-ng on the server, voice `cmn`
  as the boxes speak it (county/media.py).
- `POST /api/v1/media/audio`: the file as the body (`Content-Type: audio/...` or application/octet-stream),
  or JSON `{"audio_b64"}` -> `{"audio_b64","audio_mime","sha256","bytes","duration_s","reencoded","kbps",
  "limit_bytes","source":{...probe},"warnings":[]}`; what the box will get (re-encoded when too large).
- `POST /api/v1/media/cap`: the CAP XML as the body (or JSON `{"xml"}`) -> the compose form's fields.
- `GET /api/v1/broadcast-targets` -> the region tree inside the user's scope with each box's state.
- `POST /api/v1/broadcast-targets` `{"regions":[ids],"boxes":[ids]}` -> `{"to":[targets],"boxes":[{"box",
  "name","village","township"}]}` (county/targets.py); boxes outside the user's scope: 403, as create says.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.protocol.topics import BOX_ID_RE
from county import media, push
from county.server.routes_common import (
    MAX_TARGETS,
    ApiError,
    api,
    authorize,
    outside_scope,
    parts,
    read_json,
    reported_groups,
)
from county.store.tables import boxes as boxes_t
from county.targets import TargetError, targets_for, tree

MAX_PICKS = 500


async def _raw_body(request: Request, most: int) -> bytes:
    """The body, read in chunks and refused (413) as soon as it passes `most` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > most:
            raise ApiError(413, f"the upload is over {most} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_type(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def _media_error(exc: media.MediaError) -> ApiError:
    return ApiError(exc.status, str(exc), reason=exc.reason)


@api
async def tts_preview(request: Request) -> Response:
    authorize(request, "broadcast.create")
    body = await read_json(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise ApiError(400, "text must be a string")
    try:
        audio = await media.tts_preview(text)
    except media.MediaError as exc:
        raise _media_error(exc) from None
    return Response(audio, media_type="audio/ogg", headers={"Cache-Control": "no-store"})


@api
async def upload_audio(request: Request) -> Response:
    authorize(request, "broadcast.create")
    if _json_type(request):
        body = await read_json(request)
        b64 = body.get("audio_b64")
        if not isinstance(b64, str):
            raise ApiError(400, "audio_b64 must be a base64 string (or send the file itself as the body)")
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "audio_b64 is not base64") from None
    else:
        data = await _raw_body(request, media.MAX_UPLOAD_BYTES)
    try:
        fitted = await media.fit_audio(data)
    except media.MediaError as exc:
        raise _media_error(exc) from None
    return JSONResponse(fitted.as_json())


@api
async def import_cap(request: Request) -> Response:
    authorize(request, "broadcast.create")
    p = parts(request)
    if _json_type(request):
        xml = (await read_json(request)).get("xml")
        if not isinstance(xml, str):
            raise ApiError(400, "xml must be a string (or send the CAP file itself as the body)")
        data = xml.encode("utf-8", "replace")
    else:
        from county.cap import MAX_CAP_BYTES

        data = await _raw_body(request, MAX_CAP_BYTES)
    try:
        draft = media.cap_draft(data, p.now_s(), push.zone(p.config.county.timezone))
    except media.MediaError as exc:
        raise _media_error(exc) from None
    return JSONResponse(draft)


@api
async def target_tree(request: Request) -> Response:
    user = authorize(request, "broadcast.create")
    p = parts(request)
    async with p.db.connect() as conn:
        reported = await reported_groups(conn)
        state = {r.id: r.state for r in (await conn.execute(select(boxes_t.c.id, boxes_t.c.state))).all()}
    return JSONResponse(tree(p.regions, user.scope, reported, state))


def _ids(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_PICKS or \
            not all(isinstance(v, str) and BOX_ID_RE.fullmatch(v) for v in value):
        raise ApiError(400, f"{key} must be a list of at most {MAX_PICKS} ids ([A-Za-z0-9_-]{{1,64}})")
    return value


@api
async def resolve_targets(request: Request) -> Response:
    user = authorize(request, "broadcast.create")
    p = parts(request)
    body = await read_json(request)
    unknown = sorted(set(body) - {"regions", "boxes"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown[:8])}")
    regions, boxes = _ids(body, "regions"), _ids(body, "boxes")
    if not regions and not boxes:
        raise ApiError(400, "pick at least one region or box")
    async with p.db.connect() as conn:
        reported = await reported_groups(conn)
    try:
        to, reached = targets_for(p.regions, reported, regions, boxes)
    except TargetError as exc:
        raise ApiError(422, str(exc), reason="unknown_region") from None
    outside = outside_scope(p, user, reached)
    if outside:
        raise ApiError(403, "the pick reaches boxes outside your scope", outside_scope=outside[:50])
    if len(to) > MAX_TARGETS:
        raise ApiError(422, f"the pick is {len(to)} targets, over {MAX_TARGETS}: pick whole townships or villages "
                       "whose boxes share a group", reason="too_many_targets")
    out = []
    for b in reached:
        place = p.regions.place(b)
        out.append({"box": b, "name": place.name, "village": place.village_name, "township": place.township_name})
    return JSONResponse({"to": to, "boxes": out})


def routes() -> list[Route]:
    return [
        Route("/api/v1/media/tts-preview", tts_preview, methods=["POST"]),
        Route("/api/v1/media/audio", upload_audio, methods=["POST"]),
        Route("/api/v1/media/cap", import_cap, methods=["POST"]),
        Route("/api/v1/broadcast-targets", target_tree, methods=["GET"]),
        Route("/api/v1/broadcast-targets", resolve_targets, methods=["POST"]),
    ]

