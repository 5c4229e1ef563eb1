"""GET /api/v1/boxes and GET /api/v1/messages: the boxes a user may see, and a box's stored envelopes.

Boxes come from two places: every box that ever reported (the `boxes` table) and every box the regions
file names (a registered box that never reported is listed with state `unknown`). Names, villages and
townships come from the regions file; a box it does not name is listed as "unregistered", never dropped.
`missing` is the box's seq gap that neither its own eviction/expiry counters nor the county's retention
explain (county/store/queries.py `seq_gaps`); null when none of its envelopes is stored.

Messages are returned exactly as received: the body is a JSON array whose items are the stored envelope
texts byte for byte (no re-encoding), ascending `seq`, `seq > since_seq`, at most `limit` (default 500,
at most 5000). A full page carries `X-Next-Since-Seq`: ask again from there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.protocol.topics import BOX_ID_RE
from county.server.routes_common import ApiError, api, authorize, in_scope, int_param, parts
from county.store.queries import seq_gaps
from county.store.tables import boxes as boxes_t
from county.store.tables import messages as messages_t

UNREGISTERED = "unregistered"
MESSAGES_DEFAULT_LIMIT = 500
MESSAGES_MAX_LIMIT = 5000


def box_json(regions: Any, box: str, row: Any | None, missing: int | None = None) -> dict[str, Any]:
    pl = regions.place(box) if regions is not None else None
    registered = pl is not None and pl.registered
    return {
        "id": box,
        "name": (pl.name or box) if pl is not None and registered else UNREGISTERED,
        "village": pl.village if pl is not None else None,
        "township": pl.township if pl is not None else None,
        "village_name": pl.village_name if pl is not None else None,
        "township_name": pl.township_name if pl is not None else None,
        "registered": registered,
        "state": row["state"] if row is not None else "unknown",
        "last_seen": row["last_seen"] if row is not None else None,
        "backlog": row["backlog"] if row is not None else None,
        "version": row["version"] if row is not None else None,
        "groups": list(row["groups"] or []) if row is not None else [],
        "missing": missing,
    }


async def visible_boxes(request: Request) -> list[tuple[str, Any, int | None]]:
    """(box, its row or None, its missing seq count) for every box the user may read, reported or registered
    (a registered box that never reported is listed too), in id order."""
    user = authorize(request, "boxes.read")
    p = parts(request)
    async with p.db.connect() as conn:
        rows = {r["id"]: r for r in (await conn.execute(select(boxes_t))).mappings()}
        missing = {g.box: g.missing for g in await seq_gaps(conn)}
    ids = set(rows)
    if p.regions is not None:
        ids.update(p.regions.registered())
    return [(b, rows.get(b), missing.get(b)) for b in sorted(ids) if in_scope(p.regions, user.scope, b)]


@api
async def list_boxes(request: Request) -> Response:
    regions = parts(request).regions
    return JSONResponse([box_json(regions, b, row, missing) for b, row, missing in await visible_boxes(request)])


@api
async def list_messages(request: Request) -> Response:
    user = authorize(request, "messages.read")
    box = request.query_params.get("box", "")
    if not BOX_ID_RE.fullmatch(box):
        raise ApiError(400, "box must be a box id ([A-Za-z0-9_-]{1,64})")
    p = parts(request)
    if not in_scope(p.regions, user.scope, box):
        raise ApiError(403, "that box is outside your scope")
    since = int_param(request, "since_seq", -1, lo=-1)
    limit = int_param(request, "limit", MESSAGES_DEFAULT_LIMIT, lo=1, hi=MESSAGES_MAX_LIMIT)
    assert since is not None and limit is not None
    stmt = (select(messages_t.c.seq, messages_t.c.raw)
            .where(messages_t.c.box == box, messages_t.c.seq > since)
            .order_by(messages_t.c.seq).limit(limit))
    async with p.db.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    body = ("[" + ",".join(r.raw for r in rows) + "]").encode("utf-8")
    headers = {"X-Next-Since-Seq": str(rows[-1].seq)} if len(rows) == limit else {}
    return Response(body, media_type="application/json", headers=headers)


def routes() -> list[Route]:
    return [
        Route("/api/v1/boxes", list_boxes, methods=["GET"]),
        Route("/api/v1/messages", list_messages, methods=["GET"]),
    ]
