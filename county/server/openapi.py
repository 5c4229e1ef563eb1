"""The OpenAPI 3.1 description of the county server's /api/v1, served at `GET /api/v1/openapi.json`.

One dict built with the small helpers below (no generator, no new dependency). Its fixed core is section 6
of the contract (docs/contract-extensions.md lists the rest); tests/test_county_openapi.py checks that every
route the app mounts is described with the same methods and every described path is mounted, that every
`$ref` resolves and every operation has responses, and that real responses of boxes, alarms and a broadcast
match the schemas (and the examples) given here. A route added without its entry here fails that test.

The document is public (no session needed, like `/api/v1/health`): it describes the shape of the API, which
the project's docs publish anyway, and holds no data, no user names, no box ids and no configuration; tools
(client generators, a browser's API explorer) fetch it before they have a session.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

PATH = "/api/v1/openapi.json"
VERSION = "1"

J = dict[str, Any]


# ------------------------------------------------------------------------------------------- helpers
def ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: J) -> J:
    """A value that may also be null (3.1: a type list, or oneOf for a $ref)."""
    if "$ref" in schema:
        return {"oneOf": [schema, {"type": "null"}]}
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def obj(required: dict[str, J], optional: dict[str, J] | None = None, *, description: str | None = None,
        example: J | None = None, more: bool = False) -> J:
    """An object schema: `required` properties (always present) and `optional` ones."""
    out: J = {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required),
              "additionalProperties": more}
    if description:
        out["description"] = description
    if example is not None:
        out["examples"] = [example]
    return out


def arr(items: J, **kw: Any) -> J:
    return {"type": "array", "items": items, **kw}


STR: J = {"type": "string"}
INT: J = {"type": "integer"}
BOOL: J = {"type": "boolean"}
MS: J = {"type": "integer", "description": "epoch milliseconds"}
S: J = {"type": "integer", "description": "epoch seconds"}
NSTR, NINT, NMS = nullable(STR), nullable(INT), nullable(MS)


def json_body(schema: J, description: str) -> J:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def err(*codes: int) -> J:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}


def param(name: str, where: str, schema: J, description: str, *, required: bool = False) -> J:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


def op(summary: str, tag: str, responses: J, *, action: str | None = None, body: J | None = None,
       params: list[J] | None = None, public: bool = False, description: str | None = None) -> J:
    """One operation; `action` is the policy action it needs (county.server.auth.GRANTS), shown as
    `x-action`; `public` ones need no session."""
    out: J = {"summary": summary, "tags": [tag], "operationId": _op_id(summary), "responses": responses}
    if description:
        out["description"] = description
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if public:
        out["security"] = []
    else:
        out["responses"] = {**responses, **err(401)}
    if action:
        out["x-action"] = action
    return out


def _op_id(summary: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in summary).split()
    return words[0].lower() + "".join(w.capitalize() for w in words[1:])


ID = param("id", "path", STR, "the alarm's, broadcast's or fence push's id")
FENCE_ID = param("id", "path", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}, "the fence id")
LIMIT = functools.partial(param, "limit", "query")

# ------------------------------------------------------------------------------------------- schemas
ROLES = ["admin", "operator", "reviewer", "viewer", "gridworker"]
ALARM_STATES = ["new", "acknowledged", "assigned", "resolved"]
BROADCAST_STATES = ["publishing", "sent", "publish_failed", "awaiting_review", "cancelled"]
CRS = ["WGS84", "GCJ02", "BD09"]
AUDIO_MIMES = ["audio/mpeg", "audio/ogg", "audio/opus", "audio/wav"]

BOX_EXAMPLE: J = {"id": "lhk-menglou-001", "name": "勐楼村委会广播站", "village": "menglou", "township": "menglou-town",
                  "village_name": "勐楼村", "township_name": "勐楼镇", "registered": True, "state": "online",
                  "last_seen": 1764576000000, "backlog": 0, "version": "1.4.0", "groups": ["town-menglou"],
                  "missing": 0}
ALARM_EXAMPLE: J = {"id": "lhk-menglou-001:4711", "box": "lhk-menglou-001", "kind": "sos", "wearer": "w-0042",
                    "ts": 1764575940000, "state": "new", "pos": {"lat": 21.95, "lon": 101.25},
                    "device": "band-0042", "received": 1764575941000, "box_name": "勐楼村委会广播站",
                    "village": "menglou", "township": "menglou-town", "acked_by": None, "acked_at": None,
                    "assigned_to": None, "assigned_by": None, "assigned_at": None, "resolved_by": None,
                    "resolved_at": None, "note": None, "escalated_at": None, "escalations": 0}
BROADCAST_EXAMPLE: J = {
    "id": "7f9c2b1e-1d4a-4c55-9a51-0d1e2f3a4b5c", "state": "sent",
    "receipts": [{"box": "lhk-menglou-001", "name": "勐楼村委会广播站", "state": "scheduled", "reason": None,
                  "ts": 1764576002000},
                 {"box": "lhk-menglou-002", "name": None, "state": "no_answer", "reason": None, "ts": None}],
    "class": "daily", "level": 3, "title": "停水通知", "text": "明天上午9点停水", "audio_mime": None,
    "audio_sha256": None, "volume": 60, "start": 1764579600, "end": None, "exp": 1764662400,
    "targets": ["group:town-menglou"], "created_by": "li", "created_at": 1764576000000,
    "approved_by": None, "approved_at": None, "cancelled_by": None, "cancelled_at": None, "repeat": None}

SCHEMAS: J = {
    "Error": obj({"error": STR, "detail": STR}, more=True,
                 description="every error: `error` a short name (unauthorized, forbidden, conflict...), "
                             "`detail` one line for a person; some carry more fields (state, reason, ...)"),
    "User": obj({"name": STR, "role": {"type": "string", "enum": ROLES}, "scope": NSTR, "display_name": NSTR,
                 "phone": NSTR}),
    "Login": obj({"username": STR, "password": {"type": "string", "format": "password"}}),
    "Session": obj({"token": STR, "csrf": STR, "expires_at": MS, "user": ref("User")},
                   description="also sets the `vc_session` cookie (HttpOnly, SameSite=Strict; Secure over TLS)"),
    "Me": obj({"user": ref("User"), "csrf": STR, "expires_at": MS, "may": arr(STR)}),
    "Ok": obj({"ok": BOOL}),
    "Box": obj({"id": STR, "name": STR, "village": NSTR, "township": NSTR, "state": STR, "last_seen": NMS,
                "backlog": NINT, "version": NSTR},
               {"village_name": NSTR, "township_name": NSTR, "registered": BOOL, "groups": arr(STR),
                "missing": {"type": ["integer", "null"], "minimum": 0,
                            "description": "seqs between the box's lowest and highest stored envelope that are "
                                           "neither stored nor explained by the box's own eviction/expiry "
                                           "counters (its newest heartbeat) or the county's retention: lost on "
                                           "the way or still coming; null when nothing of it is stored"}},
               description="`name` is `unregistered` for a box the regions file does not name; `state` "
                           "online, offline or unknown (named in the regions file, never reported)",
               example=BOX_EXAMPLE),
    "Position": {"type": "object", "description": "as the band reported it (lat, lon WGS-84, ...)",
                 "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
    "Alarm": obj({"id": STR, "box": STR, "kind": STR, "wearer": NSTR, "ts": MS,
                  "state": {"type": "string", "enum": ALARM_STATES}, "pos": nullable(ref("Position"))},
                 {"device": NSTR, "received": MS, "box_name": NSTR, "village": NSTR, "township": NSTR,
                  "acked_by": NSTR, "acked_at": NMS, "assigned_to": NSTR, "assigned_by": NSTR,
                  "assigned_at": NMS, "resolved_by": NSTR, "resolved_at": NMS, "note": NSTR,
                  "escalated_at": NMS, "escalations": INT},
                 description="`kind` sos, fall, band_removed, geofence_exit, lost_contact, ...",
                 example=ALARM_EXAMPLE),
    "Assign": obj({"to": STR}, description="a gridworker's user name"),
    "Resolve": obj({}, {"note": {"type": "string", "maxLength": 4000}}),
    "BroadcastCreate": obj(
        {"to": arr({"type": "string", "pattern": "^(box|group):[A-Za-z0-9_-]{1,64}$"}, minItems=1, maxItems=200)},
        {"text": {"type": "string", "maxLength": 2000}, "audio_b64": {"type": "string", "contentEncoding": "base64"},
         "audio_mime": {"type": "string", "enum": AUDIO_MIMES},
         "class": {"type": "string", "enum": ["emergency", "daily", "drill"], "default": "daily"},
         "level": {"type": "integer", "minimum": 1, "maximum": 4},
         "start": {"type": "string", "description": "ISO 8601, `now` or `+10m`; no offset = the county's timezone"},
         "end": {"type": "string", "description": "ISO 8601 or `+2h`; no offset = the county's timezone"},
         "volume": {"type": "integer", "minimum": 0, "maximum": 100},
         "title": {"type": "string", "maxLength": 200},
         "ttl_s": {"type": "integer", "minimum": 1, "maximum": 31 * 86400, "default": 86400},
         "force": {"type": "boolean", "description": "send to a target no known box answers to, or a past start"},
         "repeat": {"$ref": "#/components/schemas/Repeat"}},
        description="the push command's options: text or audio_b64 (+audio_mime, the text then a transcript)"),
    "BroadcastCreated": obj({"id": STR, "state": {"type": "string", "enum": BROADCAST_STATES}},
                            {"boxes": arr(STR), "error": STR}),
    "BroadcastState": obj({"id": STR, "state": {"type": "string", "enum": BROADCAST_STATES}}, {"error": STR}),
    "BroadcastCancelled": obj({"id": STR, "state": {"const": "cancelled"}, "cancel_id": NSTR},
                              description="`cancel_id`: the broadcast.cancel command sent (null when it had "
                                          "not been signed yet)"),
    "BroadcastResent": obj({"id": STR, "state": {"const": "sent"}, "resent_to": arr(STR)}),
    "FencePushResent": obj({"id": STR, "resent_to": arr(STR)}),
    "Release": obj({"version": STR, "manifest_sha256": STR, "arch": STR, "python": STR, "min_from": STR,
                    "size": INT, "wheels": arr({"type": "object"}), "uploaded_by": STR, "uploaded_at": MS,
                    "missing": arr(STR), "complete": BOOL}),
    "Rollout": obj({"id": STR, "version": STR, "state": {"enum": ["pilot", "running", "halted", "done"]},
                    "reason": NSTR, "counts": {"type": "object"}, "boxes": arr({"type": "object"})},
                   {"targets": arr(STR), "max_failure_pct": INT, "wave_size": INT, "pilot": arr(STR),
                    "created_by": STR, "created_at": MS, "updated_at": MS, "waves": INT}),
    "BoxReceipt": obj({"box": STR, "state": STR, "reason": NSTR, "ts": NMS},
                      {"name": NSTR, "extra": {"type": "object", "description": "what the receipt said besides its "
                                               "state: at, until (epoch s), detail, by, occurrence, late_s, missed"}},
                      description="`state` the box's latest receipt (received, scheduled, playing, finished, "
                                  "rejected, ...) or `no_answer`"),
    "Broadcast": obj(
        {"id": STR, "state": {"type": "string", "enum": BROADCAST_STATES}, "receipts": arr(ref("BoxReceipt"))},
        {"class": STR, "level": NINT, "title": NSTR, "text": NSTR, "audio_mime": NSTR, "audio_sha256": NSTR,
         "volume": NINT, "start": nullable(S), "end": nullable(S), "exp": nullable(S), "targets": arr(STR),
         "created_by": STR, "created_at": MS, "approved_by": NSTR, "approved_at": NMS, "cancelled_by": NSTR,
         "cancelled_at": NMS, "repeat": nullable(ref("Repeat"))},
        description="one receipt row per targeted box inside the caller's scope", example=BROADCAST_EXAMPLE),
    "BroadcastSummary": obj(
        {"id": STR, "state": {"type": "string", "enum": BROADCAST_STATES}, "created_by": STR, "created_at": MS,
         "class": STR, "targets": arr(STR), "boxes": arr(STR)},
        {"level": NINT, "title": NSTR, "text": NSTR, "audio_mime": NSTR, "audio_sha256": NSTR, "volume": NINT,
         "start": nullable(S), "end": nullable(S), "exp": nullable(S), "approved_by": NSTR, "approved_at": NMS,
         "cancelled_by": NSTR, "cancelled_at": NMS, "repeat": nullable(ref("Repeat"))}),
    "Repeat": obj({"at": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}},
                  {"days": arr({"type": "string", "enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}),
                   "tz": STR, "from": STR, "until": STR, "window_s": {"type": "number"}},
                  description="a recurring broadcast (docs/broadcast.md): local `at` on `days` (default every "
                              "day) in `tz` (default the county's timezone), dates `from`..`until` inclusive"),
    # the compose page's helpers (county/server/routes_media.py)
    "TtsPreview": obj({"text": {"type": "string", "maxLength": 2000}}),
    "AudioFitted": obj(
        {"audio_b64": STR, "audio_mime": {"type": "string", "enum": AUDIO_MIMES}, "sha256": STR, "bytes": INT,
         "duration_s": {"type": "number"}, "reencoded": BOOL, "kbps": NINT, "limit_bytes": INT,
         "source": obj({"format": STR, "codec": STR, "duration_s": {"type": "number"}, "channels": INT,
                        "sample_rate": INT, "bytes": INT}),
         "warnings": arr(STR)},
        description="the audio as the boxes will get it (re-encoded to Ogg/Opus when over `limit_bytes`); "
                    "POST /api/v1/broadcasts takes `audio_b64` and `audio_mime` from here"),
    "CapDraft": obj({"broadcast_id": STR, "cancels": arr(STR), "msg_type": STR, "status": STR, "sender": STR,
                     "identifier": STR},
                    {"class": STR, "level": INT, "title": STR, "text": STR, "start": NSTR, "end": NSTR,
                     "end_past": BOOL, "truncated": BOOL},
                    description="the compose form's fields from a CAP 1.2 alert; `start`/`end` local "
                                "`YYYY-MM-DDTHH:MM` in the county's timezone; no play fields for msgType Cancel"),
    "TargetNode": {"type": "object", "required": ["id", "name", "kind"],
                   "properties": {"id": STR, "name": STR,
                                  "kind": {"type": "string", "enum": ["county", "township", "village", "box"]},
                                  "boxes": INT, "state": STR, "children": arr(ref("TargetNode")),
                                  "unregistered": arr(ref("TargetNode"))}},
    "TargetPick": obj({}, {"regions": arr(STR, maxItems=500), "boxes": arr(STR, maxItems=500)}),
    "TargetsResolved": obj({"to": arr(STR), "boxes": arr(obj({"box": STR, "name": NSTR, "village": NSTR,
                                                              "township": NSTR}))},
                           description="`to` as POST /api/v1/broadcasts takes it, and every box it reaches"),
    "Fence": obj({"id": STR, "name": STR, "feature": ref("Feature"), "crs": {"type": "string", "enum": CRS},
                  "created_by": STR, "updated_at": MS},
                 description="a stored fence; `feature.id` is the fence id, `feature.properties.name` its name"),
    "Feature": {"type": "object", "required": ["type", "geometry"],
                "description": "a GeoJSON Feature: geometry Polygon or MultiPolygon ([lon, lat] rings of 3+ "
                               "distinct positions), or a circle: a Point with properties.radius_m "
                               "(0 < r <= 100000 metres)",
                "properties": {"type": {"const": "Feature"}, "geometry": {"type": "object"},
                               "properties": {"type": "object"}}},
    "FencePut": obj({"feature": ref("Feature")},
                    {"name": {"type": "string", "maxLength": 200, "description": "default: the id"},
                     "crs": {"type": "string", "enum": CRS, "default": "WGS84"}}),
    "FencePush": obj(
        {"fences": arr({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}, minItems=1, maxItems=200),
         "to": arr({"type": "string", "pattern": "^(box|group):[A-Za-z0-9_-]{1,64}$"}, minItems=1, maxItems=200)},
        {"assign": {"type": "object", "additionalProperties": arr(STR),
                    "description": "wearer id -> fence ids (each among `fences`)"},
         "ttl_s": {"type": "integer", "minimum": 1, "maximum": 31 * 86400, "default": 86400},
         "force": {"type": "boolean", "description": "send even if a target no known box answers to"}},
        description="the stored fences (one crs) as one geofence.set, signed with the county key"),
    "FencePushCreated": obj({"id": STR, "state": {"type": "string", "enum": ["sent", "publish_failed"]},
                             "boxes": arr(STR)}, {"error": STR},
                            description="`id` is the geofence.set command id (the boxes' receipts name it)"),
    "FencePushBoard": obj(
        {"id": STR, "fences": arr(STR), "crs": STR, "collection": {"type": "object"},
         "assign": {"type": "object", "additionalProperties": arr(STR)}, "targets": arr(STR), "created_by": STR,
         "created_at": MS, "receipts": arr(ref("BoxReceipt"))},
        description="one receipt row per targeted box inside the caller's scope: `applied`, `rejected` (with "
                    "the reason), `failed`, or `no_answer`; `collection` is the FeatureCollection as sent"),
    "Envelope": {"type": "object", "description": "an uplink envelope exactly as the box sent it (contract "
                                                  "section 3): v, box, seq, ts, class, kind, data, ..."},
    "ReceiptEvent": obj({"cmd": STR, "box": STR, "state": STR, "reason": NSTR, "ts": MS}, more=True),
    "MapSettings": obj(
        {"tiles": obj({"kind": {"type": "string", "enum": ["none", "tianditu", "amap", "custom"]},
                       "crs": {"type": "string", "enum": ["WGS84", "GCJ02"]},
                       "layers": arr(obj({"url": STR, "subdomains": STR})), "attribution": STR, "max_zoom": INT}),
         "outline": nullable({"type": "object"}),
         "outline_source": nullable({"type": "string", "enum": ["file", "points"]}),
         "places": arr(obj({"box": STR, "name": STR, "village": STR, "village_name": STR, "township": STR,
                            "township_name": STR, "lat": {"type": "number"}, "lon": {"type": "number"}}))},
        description="`tiles.crs` is the datum the tiles are drawn in (GCJ02: shift WGS-84 points to draw them); "
                    "`outline` a GeoJSON FeatureCollection (WGS-84)"),
    "WearerPosition": obj({"box": STR, "wearer": STR, "device": NSTR, "lat": {"type": "number"},
                           "lon": {"type": "number"}, "acc_m": nullable({"type": "number"}), "ts": MS}),
    "AlarmDetail": obj(
        {"id": STR, "box": STR, "kind": STR, "wearer": NSTR, "ts": MS,
         "state": {"type": "string", "enum": ALARM_STATES}, "pos": nullable(ref("Position")),
         "data": {"type": "object"}, "raw": NSTR,
         "fences": arr(obj({"id": STR, "name": STR, "crs": STR, "feature": ref("Feature")})),
         "response": obj({"ack_s": nullable({"type": "number"}), "assign_s": nullable({"type": "number"}),
                          "resolve_s": nullable({"type": "number"})})},
        {"device": NSTR, "received": MS, "box_name": NSTR, "village": NSTR, "township": NSTR,
         "acked_by": NSTR, "acked_at": NMS, "assigned_to": NSTR, "assigned_by": NSTR,
         "assigned_at": NMS, "resolved_by": NSTR, "resolved_at": NMS, "note": NSTR,
         "escalated_at": NMS, "escalations": INT},
        description="an Alarm's fields plus `data`, `raw` (the envelope as received; null when no longer "
                    "stored), `fences` and `response` (seconds from reception to each action)"),
    "Track": obj({"wearer": NSTR, "from": MS, "to": MS,
                  "points": arr(obj({"lat": {"type": "number"}, "lon": {"type": "number"},
                                     "acc_m": nullable({"type": "number"}), "ts": MS, "box": STR}))}),
    "Report": obj({"report": STR, "period": {"type": "string", "enum": ["day", "month"]}, "date": STR,
                   "timezone": STR, "from": MS, "to": MS, "columns": arr(STR), "rows": arr(arr({}))}),
}

ERRORS = {400: "bad input: the detail says which field", 401: "no session, or it expired",
          403: "the role or scope forbids it (or a cookie write without X-CSRF-Token)", 404: "no such item",
          409: "a transition that is not allowed from the current state (`state` says which)",
          413: "body too large", 415: "not a media type this route takes (the detail says which)",
          422: "refused as given (`reason`: nobody_hears, start_past, ...)",
          429: "too many failed logins (Retry-After)", 503: "the server lacks a part (broker, key, stream)"}


def _responses() -> J:
    return {f"E{code}": json_body(ref("Error"), text) for code, text in ERRORS.items()}


# --------------------------------------------------------------------------------------------- paths
def _report(name: str, what: str) -> J:
    q = [param("period", "query", {"type": "string", "enum": ["day", "month"], "default": "day"}, "report period"),
         param("date", "query", STR, "YYYY-MM-DD (a month: any day of it, or YYYY-MM); default today"),
         param("region", "query", STR, "a township or village id (default: the caller's scope)"),
         param("format", "query", {"type": "string", "enum": ["json", "csv", "xlsx"], "default": "json"},
               "json, or a CSV/XLSX download")]
    ok = {"description": what, "content": {
        "application/json": {"schema": ref("Report")},
        "text/csv": {"schema": STR},
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {"schema": {"type": "string",
                                                                                         "format": "binary"}}}}
    return {"get": op(f"{name} report", "reports", {"200": ok, **err(400, 403)}, action="reports.read", params=q)}


def _transition(name: str, action: str, body: J | None) -> J:
    return {"post": op(f"{name} alarm", "alarms", {"200": json_body(ref("Alarm"), "the alarm after it"),
                                                   **err(400, 403, 404, 409, 422)},
                       action=f"alarm.{action}", body=body, params=[ID])}


EVENTS_DESCRIPTION = (
    "Server-Sent Events (`id: N`, `event: KIND`, `data: JSON` on one line). Kinds: `alarm` (data an Alarm), "
    "`receipt` (a ReceiptEvent), `box` (a Box), `lost` (`{\"count\": n}`: this stream dropped events, reload "
    "the lists), `session_expired` (the stream then ends). A `: heartbeat` comment every 15 s of silence. "
    "Only events of boxes inside the caller's scope are sent (a gridworker: only the alarms assigned to them).")


def paths() -> J:
    return {
        "/api/v1/session": {
            "post": op("log in", "session", {"200": json_body(ref("Session"), "a new session"),
                                             **err(400, 401, 413, 429)}, body=ref("Login"), public=True),
            "delete": op("log out", "session", {"200": json_body(ref("Ok"), "the session ended")}),
        },
        "/api/v1/me": {"get": op("who am I", "session", {"200": json_body(ref("Me"), "the caller and its grants")})},
        "/api/v1/health": {
            "get": op("health", "session", {"200": json_body(ref("Ok"), "the server answers")}, public=True),
            "head": op("health head", "session", {"200": {"description": "the server answers"}}, public=True),
        },
        PATH: {"get": op("OpenAPI document", "session",
                         {"200": json_body({"type": "object"}, "this document")}, public=True)},
        "/api/v1/boxes": {"get": op("list boxes", "boxes", {"200": json_body(arr(ref("Box")), "boxes in scope")},
                                    action="boxes.read")},
        "/api/v1/messages": {"get": op(
            "list messages", "boxes",
            {"200": {"description": "a box's stored envelopes, ascending seq, each exactly as received; a full "
                                    "page carries X-Next-Since-Seq",
                     "headers": {"X-Next-Since-Seq": {"schema": INT, "description": "ask again from here"}},
                     "content": {"application/json": {"schema": arr(ref("Envelope"))}}}, **err(400, 403)},
            action="messages.read",
            params=[param("box", "query", STR, "the box id", required=True),
                    param("since_seq", "query", {"type": "integer", "minimum": -1, "default": -1}, "seq > this"),
                    LIMIT({"type": "integer", "minimum": 1, "maximum": 5000, "default": 500}, "page size")])},
        "/api/v1/alarms": {"get": op(
            "list alarms", "alarms", {"200": json_body(arr(ref("Alarm")), "newest unacknowledged first"),
                                      **err(400)},
            action="alarms.read",
            params=[param("state", "query", {"type": "string", "enum": ["open", "all", *ALARM_STATES],
                                             "default": "open"}, "`open` = not resolved"),
                    LIMIT({"type": "integer", "minimum": 1, "maximum": 5000, "default": 500}, "at most")])},
        "/api/v1/alarms/{id}/ack": _transition("acknowledge", "ack", None),
        "/api/v1/alarms/{id}/assign": _transition("assign", "assign", ref("Assign")),
        "/api/v1/alarms/{id}/resolve": _transition("resolve", "resolve", ref("Resolve")),
        "/api/v1/broadcasts": {
            "post": op("create broadcast", "broadcasts",
                       {"201": json_body(ref("BroadcastCreated"), "stored; sent or awaiting_review"),
                        "503": json_body(ref("BroadcastCreated"), "stored, but the broker did not take it "
                                                                  "(publish_failed: resend)"),
                        **err(400, 403, 413, 422)},
                       action="broadcast.create", body=ref("BroadcastCreate"),
                       description="an emergency also needs broadcast.emergency; every target must lie inside "
                                   "the caller's scope"),
            "get": op("list broadcasts", "broadcasts",
                      {"200": json_body(arr(ref("BroadcastSummary")), "newest first"), **err(400)},
                      action="broadcasts.read",
                      params=[LIMIT({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "at most")]),
        },
        "/api/v1/broadcasts/{id}": {"get": op(
            "get broadcast", "broadcasts", {"200": json_body(ref("Broadcast"), "the broadcast and its board"),
                                            **err(403, 404)}, action="broadcasts.read", params=[ID])},
        "/api/v1/broadcasts/{id}/approve": {"post": op(
            "approve broadcast", "broadcasts",
            {"200": json_body(ref("BroadcastState"), "signed and sent"),
             "503": json_body(ref("BroadcastState"), "approved, the broker did not take it"),
             **err(403, 404, 409)}, action="broadcast.approve", params=[ID],
            description="by a different user than its author")},
        "/api/v1/broadcasts/{id}/cancel": {"post": op(
            "cancel broadcast", "broadcasts", {"200": json_body(ref("BroadcastCancelled"), "cancelled"),
                                               **err(403, 404, 409, 503)},
            action="broadcast.cancel", params=[ID])},
        "/api/v1/broadcasts/{id}/resend": {"post": op(
            "resend broadcast", "broadcasts",
            {"200": json_body(ref("BroadcastResent"), "published again to the boxes with no receipt"),
             **err(403, 404, 409, 503)}, action="broadcast.resend", params=[ID])},
        "/api/v1/fences": {"get": op("list fences", "fences", {"200": json_body(arr(ref("Fence")), "by id")},
                                     action="fences.read")},
        "/api/v1/fences/{id}": {
            "put": op("store fence", "fences",
                      {"200": json_body(ref("Fence"), "changed"), "201": json_body(ref("Fence"), "created"),
                       **err(400, 403, 409, 413, 422)},
                      action="fence.edit", body=ref("FencePut"), params=[FENCE_ID],
                      description="checked as `village county fences` checks a file (422 `invalid_feature` "
                                  "with the detail); a township or village user changes only their own fences"),
            "delete": op("delete fence", "fences", {"200": json_body(ref("Ok"), "deleted"), **err(400, 403, 404)},
                         action="fence.edit", params=[FENCE_ID]),
        },
        "/api/v1/fences/push": {"post": op(
            "push fences", "fences",
            {"201": json_body(ref("FencePushCreated"), "signed, stored and on the broker"),
             "503": json_body(ref("FencePushCreated"), "stored, but the broker did not take it"),
             **err(400, 403, 413, 422)},
            action="fence.push", body=ref("FencePush"),
            description="422 reasons: unknown_fence, mixed_crs, nobody_hears, invalid_feature; every target must "
                        "lie inside the caller's scope (403, audited)")},
        "/api/v1/fences/push/{id}": {"get": op(
            "get fence push", "fences", {"200": json_body(ref("FencePushBoard"), "the push and where it applied"),
                                         **err(403, 404)}, action="fences.read", params=[ID])},
        "/api/v1/fences/push/{id}/resend": {"post": op(
            "resend fence push", "fences",
            {"200": json_body(ref("FencePushResent"), "published again to the boxes in scope with no receipt"),
             **err(403, 404, 409, 503)}, action="fence.push", params=[ID],
            description="409 `expired` once the signed command expired, `no_token` for a push stored before "
                        "tokens were kept")},
        "/api/v1/events": {"get": op(
            "event stream", "events",
            {"200": {"description": "the stream", "content": {"text/event-stream": {"schema": STR}}},
             **err(400, 503)},
            action="events.read", description=EVENTS_DESCRIPTION,
            params=[param("kinds", "query", STR, "comma-separated subset of alarm,receipt,box")])},
        "/api/v1/reports/cameras": _report("camera", "camera online rate per village, township and county"),
        "/api/v1/reports/boxes": _report("box", "box online rate per village, township and county"),
        "/api/v1/reports/alarms": _report("alarm", "alarm counts and response times"),
        # the compose page's helpers (county/server/routes_media.py)
        "/api/v1/media/tts-preview": {"post": op(
            "tts preview", "broadcasts",
            {"200": {"description": "the text spoken by the server's espeak-ng (voice cmn), Ogg/Opus",
                     "content": {"audio/ogg": {"schema": {"type": "string", "contentEncoding": "binary"}}}},
             **err(400, 403, 413, 503)},
            action="broadcast.create", body=ref("TtsPreview"))},
        "/api/v1/media/audio": {"post": {**op(
            "upload audio", "broadcasts",
            {"200": json_body(ref("AudioFitted"), "checked (ffprobe) and fitted to the inline limit"),
             **err(400, 403, 413, 415, 422)},
            action="broadcast.create",
            description="the file as the body (audio/mpeg, audio/wav, audio/ogg, audio/opus or "
                        "application/octet-stream; at most 12 MiB), or JSON {\"audio_b64\"}; 415 for what is not "
                        "MP3, WAV or Ogg; 413 `too_long` when even 8 kbps would not fit"),
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "contentEncoding": "binary"}},
                "application/json": {"schema": obj({"audio_b64": STR})}}}}},
        "/api/v1/media/cap": {"post": {**op(
            "import cap", "broadcasts",
            {"200": json_body(ref("CapDraft"), "the draft"), **err(400, 403, 413, 422)},
            action="broadcast.create", description="a CAP 1.2 alert (county/cap.py's mapping); 422 `bad_cap` "
                                                   "with the reason"),
            "requestBody": {"required": True, "content": {
                "application/xml": {"schema": STR}, "application/json": {"schema": obj({"xml": STR})}}}}},
        "/api/v1/broadcast-targets": {
            "get": op("target tree", "broadcasts", {"200": json_body(ref("TargetNode"), "the user's scope")},
                      action="broadcast.create"),
            "post": op("resolve targets", "broadcasts",
                       {"200": json_body(ref("TargetsResolved"), "the targets and the exact boxes"),
                        **err(400, 403, 422)},
                       action="broadcast.create", body=ref("TargetPick"),
                       description="regions become group:NAME when one group reaches exactly their boxes, else "
                                   "box:ID each"),
        },
        # the web console's map (county/server/routes_map.py)
        "/api/v1/map": {"get": op(
            "map settings", "boxes", {"200": json_body(ref("MapSettings"), "tiles, outline and places")},
            action="boxes.read",
            description="the [map] tile layer (the 天地图 browser key is in its URL: the browser fetches the "
                        "tiles), the county outline and the positioned boxes inside the caller's scope")},
        "/api/v1/positions": {"get": op(
            "latest positions", "boxes",
            {"200": json_body(arr(ref("WearerPosition")), "newest first"), **err(403)},
            action="alarms.read", description="refused to a gridworker")},
        "/api/v1/alarms/{id}": {"get": op(
            "get alarm", "alarms", {"200": json_body(ref("AlarmDetail"), "the alarm in full"), **err(403, 404)},
            action="alarms.read", params=[ID],
            description="a gridworker only for an alarm assigned to them")},
        "/api/v1/alarms/{id}/track": {"get": op(
            "alarm track", "alarms", {"200": json_body(ref("Track"), "the wearer's positions, oldest first"),
                                      **err(400, 403, 404)},
            action="alarms.read",
            params=[ID, param("minutes", "query", {"type": "integer", "minimum": 1, "maximum": 1440, "default": 60},
                              "from this many minutes before the alarm until now")])},
        "/api/v1/alarms/{id}/assignees": {"get": op(
            "alarm assignees", "alarms",
            {"200": json_body(arr(obj({"name": STR, "display_name": NSTR, "phone": NSTR})),
                              "enabled gridworkers whose scope covers the alarm's box"), **err(403, 404)},
            action="alarm.assign", params=[ID])},
        # the web console's overview, boxes, cameras, users and audit pages (county/server/routes_console.py)
        "/api/v1/overview": {"get": op(
            "overview", "boxes", {"200": json_body(obj({"now": MS, "timezone": STR, "county": {"type": "object"},
                                                        "scope": NSTR, "counts": {"type": "object"},
                                                        "townships": arr({"type": "object"}),
                                                        "unregistered": {"type": ["object", "null"]}}),
                                                   "the region tree with a health line per village")},
            action="boxes.read")},
        "/api/v1/fleet": {"get": op(
            "list fleet", "boxes", {"200": json_body(arr({"type": "object"}), "boxes in scope with their last "
                                                                             "heartbeat's clock and outbox")},
            action="boxes.read")},
        "/api/v1/boxes/{id}": {"get": op(
            "get box", "boxes", {"200": json_body({"type": "object"}, "the box, its last heartbeat, cameras and "
                                                                      "(with messages.read) its recent timeline"),
                                 **err(400, 403, 404)},
            action="boxes.read", params=[param("id", "path", STR, "the box id")])},
        "/api/v1/cameras": {"get": op(
            "list cameras", "reports", {"200": json_body(arr({"type": "object"}), "current camera states in scope")},
            action="reports.read")},
        "/api/v1/reports/cameras/sheet": {"get": op(
            "camera assessment sheet", "reports",
            {"200": {"description": "a download: the camera report as a county assessment sheet (by township, "
                                    "with subtotals), XLSX or CSV",
                     "content": {"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                         "schema": {"type": "string", "contentEncoding": "binary"}},
                         "text/csv": {"schema": STR}}}, **err(400, 403)},
            action="reports.read",
            params=[param("period", "query", {"enum": ["day", "month"]}, "day (default) or month"),
                    param("date", "query", STR, "YYYY-MM-DD (a month: any day of it, or YYYY-MM)"),
                    param("region", "query", STR, "a township or village id inside the caller's scope"),
                    param("format", "query", {"enum": ["xlsx", "csv"]}, "xlsx (default) or csv"),
                    param("lang", "query", {"enum": ["zh_CN", "en"]}, "headings' language (default zh_CN)")])},
        "/api/v1/users": {
            "get": op("list users", "users", {"200": json_body(arr({"type": "object"}), "users in scope")},
                      action="users.read"),
            "post": op("add user", "users", {"201": json_body({"type": "object"}, "the new user"),
                                             **err(400, 403, 409)},
                       action="user.manage", body=obj({"name": STR, "role": {"enum": ROLES}, "password": STR},
                                                      {"scope": NSTR, "display_name": NSTR, "phone": NSTR})),
        },
        "/api/v1/users/{name}": {"patch": op(
            "change user", "users", {"200": json_body({"type": "object"}, "the user as changed"),
                                     **err(400, 403, 404, 409)},
            action="user.manage", params=[param("name", "path", STR, "the user name")],
            body=obj({}, {"role": {"enum": ROLES}, "scope": NSTR, "display_name": NSTR, "phone": NSTR,
                          "password": STR, "disabled": BOOL}))},
        "/api/v1/audit": {"get": op(
            "list audit", "users", {"200": json_body(obj({"rows": arr({"type": "object"}), "next_before": NINT}),
                                                     "newest first"), **err(400)},
            action="audit.read",
            params=[param("actor", "query", STR, "exactly this user"),
                    param("action", "query", STR, "exactly this action, or a prefix ending in '.'"),
                    param("target", "query", STR, "exactly this target"),
                    param("from", "query", MS, "ts at or after"), param("to", "query", MS, "ts before"),
                    param("before", "query", INT, "seq below (the previous page's next_before)"),
                    LIMIT({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "rows")])},
        "/api/v1/audit/check": {"get": op(
            "check audit", "users", {"200": json_body(obj({"ok": BOOL, "rows": INT, "head_seq": NINT,
                                                           "head_hash": NSTR,
                                                           "broken": {"type": ["object", "null"]}}),
                                                      "the hash chain's check")},
            action="audit.read")},
        # signed agent updates (routes_releases.py, docs/updates.md)
        "/api/v1/releases": {
            "post": op("upload release manifest", "releases",
                       {"201": json_body(ref("Release"), "registered; `missing` lists the wheels to PUT"),
                        "200": json_body(ref("Release"), "already registered with this manifest"),
                        **err(400, 403, 409, 422)},
                       action="release.manage", body=obj({"manifest": STR}),
                       description="the manifest's form is checked here; its signature by the boxes"),
            "get": op("list releases", "releases", {"200": json_body(arr(ref("Release")), "newest first"),
                                                    **err(403)}, action="release.manage")},
        "/api/v1/releases/{version}/wheels/{file}": {"put": op(
            "upload release wheel", "releases",
            {"200": json_body(ref("Release"), "stored"), **err(400, 403, 404, 413, 422)},
            action="release.manage",
            params=[param("version", "path", STR, "the release"), param("file", "path", STR, "a manifest wheel")],
            description="the body is the wheel; 422 `hash_mismatch` when it is not the one the manifest names")},
        "/api/v1/rollouts": {
            "post": op("start rollout", "releases",
                       {"201": json_body(ref("Rollout"), "started; the pilot wave is sent"),
                        **err(400, 403, 404, 409, 422)},
                       action="release.manage",
                       body=obj({"version": STR, "to": arr(STR)},
                                {"pilot": {"type": ["integer", "array"]}, "wave_size": INT, "max_failure_pct": INT,
                                 "wave_timeout_s": INT, "base_url": STR, "force": BOOL})),
            "get": op("list rollouts", "releases", {"200": json_body(arr({"type": "object"}), "newest first"),
                                                    **err(403)}, action="release.manage")},
        "/api/v1/rollouts/{id}": {"get": op(
            "get rollout", "releases", {"200": json_body(ref("Rollout"), "its state and one row per box"),
                                        **err(403, 404)}, action="release.manage", params=[ID])},
        "/api/v1/rollouts/{id}/halt": {"post": op(
            "halt rollout", "releases", {"200": json_body(ref("Rollout"), "halted"), **err(403, 404, 409)},
            action="release.manage", params=[ID])},
    }


@functools.cache
def _document() -> J:
    return {
        "openapi": "3.1.0",
        "info": {"title": "village-edge county server", "version": VERSION,
                 "description": "The county server's HTTP API (docs/county-server.md). Times are epoch ms "
                                "unless a field says seconds; ISO 8601 is accepted on input."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"cookie": []}],
        "tags": [{"name": t} for t in ("session", "boxes", "alarms", "broadcasts", "fences", "events", "reports",
                                                  "users")],
        "paths": paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": _responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the token of POST /api/v1/session"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "vc_session",
                           "description": "writes also need the X-CSRF-Token header (GET /api/v1/me)"},
            },
        },
    }


def document() -> J:
    """A fresh copy of the document (callers may change it)."""
    return copy.deepcopy(_document())


async def endpoint(request: Request) -> Response:
    return JSONResponse(_document())
