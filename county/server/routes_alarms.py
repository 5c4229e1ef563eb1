"""GET /api/v1/alarms and the alarm lifecycle: ack, assign (to a 网格员), resolve.

States: new -> acknowledged -> assigned -> resolved (assigned -> assigned re-assigns; acknowledged ->
resolved closes a false alarm without a visit). Any other transition answers 409 with the current state.
Each transition is one conditional UPDATE (`WHERE state IN (allowed)`), so two operators acting at once
cannot both win, on SQLite and PostgreSQL alike; who and when are stored, and the action is appended to
the audit log in the same transaction. A gridworker sees and resolves only the alarms assigned to them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, select, update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from county.server.routes_common import (
    ApiError,
    api,
    audit_append,
    authorize,
    emit,
    in_scope,
    int_param,
    parts,
    place,
    read_json,
    scope_boxes,
)
from county.store.tables import alarms as alarms_t
from county.store.tables import users as users_t

STATES = ("new", "acknowledged", "assigned", "resolved")
GRIDWORKER = "gridworker"
LIST_DEFAULT_LIMIT = 500
LIST_MAX_LIMIT = 5000
MAX_NOTE_CHARS = 4000
# action -> (states it may start from, the state it leads to)
TRANSITIONS = {
    "ack": (("new",), "acknowledged"),
    "assign": (("acknowledged", "assigned"), "assigned"),
    "resolve": (("acknowledged", "assigned"), "resolved"),
}


def alarm_json(row: Any, regions: Any = None) -> dict[str, Any]:
    """An alarm as the API and the event stream show it (the contract's fields first)."""
    name, village, township = place(regions, row["box"])
    return {
        "id": row["id"], "box": row["box"], "kind": row["kind"], "wearer": row["wearer"], "ts": row["ts"],
        "state": row["state"], "pos": row["pos"],
        "device": row["device"], "received": row["received"],
        "box_name": name, "village": village, "township": township,
        "acked_by": row["acked_by"], "acked_at": row["acked_at"],
        "assigned_to": row["assigned_to"], "assigned_by": row["assigned_by"], "assigned_at": row["assigned_at"],
        "resolved_by": row["resolved_by"], "resolved_at": row["resolved_at"], "note": row["note"],
        "escalated_at": row["escalated_at"], "escalations": row["escalations"],
    }


def _is_gridworker(user: Any) -> bool:
    return str(user.role) == GRIDWORKER


@api
async def list_alarms(request: Request) -> Response:
    user = authorize(request, "alarms.read")
    p = parts(request)
    state = request.query_params.get("state", "open")
    if state not in (*STATES, "open", "all"):
        raise ApiError(400, "state must be open, all, new, acknowledged, assigned or resolved")
    limit = int_param(request, "limit", LIST_DEFAULT_LIMIT, lo=1, hi=LIST_MAX_LIMIT)
    stmt = select(alarms_t)
    if state == "open":
        stmt = stmt.where(alarms_t.c.state != "resolved")
    elif state != "all":
        stmt = stmt.where(alarms_t.c.state == state)
    if _is_gridworker(user):
        stmt = stmt.where(alarms_t.c.assigned_to == user.name)
    boxes = scope_boxes(p.regions, user.scope)
    if boxes is not None:
        stmt = stmt.where(alarms_t.c.box.in_(sorted(boxes)))
    # newest unacknowledged first, then the rest newest first
    stmt = stmt.order_by(case((alarms_t.c.state == "new", 0), else_=1), alarms_t.c.ts.desc(),
                         alarms_t.c.id).limit(limit)
    async with p.db.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return JSONResponse([alarm_json(r, p.regions) for r in rows])


async def _load(conn: Any, alarm_id: str) -> Any:
    return (await conn.execute(select(alarms_t).where(alarms_t.c.id == alarm_id))).mappings().first()


async def _transition(request: Request, action: str) -> Response:
    user = authorize(request, f"alarm.{action}")
    alarm_id = request.path_params["id"]
    body = await read_json(request)
    p = parts(request)
    allowed_from, to_state = TRANSITIONS[action]
    now = p.now_ms()
    values: dict[str, Any]
    detail: dict[str, Any] = {}
    async with p.db.begin() as conn:
        row = await _load(conn, alarm_id)
        if row is None:
            raise ApiError(404, "no such alarm")
        if not in_scope(p.regions, user.scope, row["box"]):
            raise ApiError(403, "that alarm's box is outside your scope")
        if _is_gridworker(user) and row["assigned_to"] != user.name:
            raise ApiError(403, "a gridworker acts only on the alarms assigned to them")
        if action == "ack":
            values = {"acked_by": user.name, "acked_at": now}
        elif action == "assign":
            to = body.get("to")
            if not isinstance(to, str) or not to:
                raise ApiError(400, "assign needs {\"to\": a gridworker's user name}")
            worker = (await conn.execute(select(users_t).where(users_t.c.name == to))).mappings().first()
            if worker is None or worker["disabled"]:
                raise ApiError(422, "no such user", to=to)
            if worker["role"] != GRIDWORKER:
                raise ApiError(422, "an alarm is assigned to a gridworker (网格员)", to=to, role=worker["role"])
            if not in_scope(p.regions, worker["scope"], row["box"]):
                raise ApiError(422, "that gridworker's scope does not cover the alarm's box", to=to)
            values = {"assigned_to": to, "assigned_by": user.name, "assigned_at": now}
            detail = {"assigned_to": to, "phone": worker["phone"]}
        else:
            note = body.get("note", "")
            if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
                raise ApiError(400, f"note must be a string of at most {MAX_NOTE_CHARS} characters")
            if _is_gridworker(user) and row["state"] != "assigned":
                raise ApiError(409, f"alarm is {row['state']}", state=row["state"])
            values = {"resolved_by": user.name, "resolved_at": now, "note": note}
            detail = {"note": note}
        stmt = (update(alarms_t).where(alarms_t.c.id == alarm_id, alarms_t.c.state.in_(allowed_from))
                .values(state=to_state, **values))
        if _is_gridworker(user):
            stmt = stmt.where(alarms_t.c.assigned_to == user.name)
        result = await conn.execute(stmt)
        if result.rowcount != 1:
            current = await _load(conn, alarm_id)
            state = current["state"] if current is not None else None
            raise ApiError(409, f"cannot {action} an alarm that is {state}", state=state,
                           allowed_from=list(allowed_from))
        await audit_append(conn, user.name, f"alarm.{action}", alarm_id,
                           {"from": row["state"], "to": to_state, "box": row["box"], **detail})
        after = await _load(conn, alarm_id)
    out = alarm_json(after, p.regions)
    await emit(p.hub, "alarm", out)
    return JSONResponse(out)


@api
async def ack(request: Request) -> Response:
    return await _transition(request, "ack")


@api
async def assign(request: Request) -> Response:
    return await _transition(request, "assign")


@api
async def resolve(request: Request) -> Response:
    return await _transition(request, "resolve")


def routes() -> list[Route]:
    return [
        Route("/api/v1/alarms", list_alarms, methods=["GET"]),
        Route("/api/v1/alarms/{id}/ack", ack, methods=["POST"]),
        Route("/api/v1/alarms/{id}/assign", assign, methods=["POST"]),
        Route("/api/v1/alarms/{id}/resolve", resolve, methods=["POST"]),
    ]
