"""Every API route of this module set × every role (admin, operator, reviewer, viewer, gridworker), and
without a session, through the real app on SQLite and PostgreSQL (review on, so approve has work).

Each role gets a fresh server with the same objects, then makes every request once; the table below is
the policy as a user sees it. The township cases (a township operator pushing to another township, a
viewer pushing) are in test_county_api_broadcasts.py with their audit rows."""

from __future__ import annotations

import base64
import io
import wave
from typing import Any

import httpx
import pytest

from county.store.tables import broadcasts
from tests.county_api import ROLE_USER, ROLES, Env, review_env_fixture  # noqa: F401 - the `review_env` fixture
from tests.test_county_api_events import served

OK, CREATED, FORBIDDEN = 200, 201, 403


def media_wav() -> bytes:
    """0.2 s of 16-bit silence: a real WAV for the upload route (it probes it with ffprobe)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(3200))
    return out.getvalue()
A, OP, R, V, G = ROLES  # admin, operator, reviewer, viewer, gridworker

# route name -> expected status per role
EXPECTED: dict[str, dict[str, int]] = {
    "GET boxes":              {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "GET messages":           {A: OK, OP: OK, R: OK, V: OK, G: FORBIDDEN},
    "GET alarms":             {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "POST alarm ack":         {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST alarm assign":      {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST alarm resolve":     {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: OK},  # gw-a: assigned to them
    "POST broadcasts":        {A: CREATED, OP: CREATED, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST emergency":         {A: CREATED, OP: CREATED, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "GET broadcasts":         {A: OK, OP: OK, R: OK, V: OK, G: FORBIDDEN},
    "GET broadcast":          {A: OK, OP: OK, R: OK, V: OK, G: FORBIDDEN},
    "POST broadcast approve": {A: OK, OP: FORBIDDEN, R: OK, V: FORBIDDEN, G: FORBIDDEN},
    "POST broadcast resend":  {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST broadcast cancel":  {A: OK, OP: OK, R: OK, V: FORBIDDEN, G: FORBIDDEN},
    "GET fences":             {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "PUT fence":              {A: CREATED, OP: CREATED, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST fences push":       {A: CREATED, OP: CREATED, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "GET fence push":         {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "DELETE fence":           {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "GET events":             {A: OK, OP: OK, R: OK, V: OK, G: OK},
    # the web console's map (routes_map.py); gw-a sees a1:assigned, which is assigned to them
    "GET map":                {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "GET positions":          {A: OK, OP: OK, R: OK, V: OK, G: FORBIDDEN},
    "GET alarm":              {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "GET alarm track":        {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "GET alarm assignees":    {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    # the compose page's helpers (routes_media.py): broadcast.create
    "POST tts preview":       {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST audio upload":      {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST cap import":        {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "GET broadcast targets":  {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST broadcast targets": {A: OK, OP: OK, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    # the web console's overview, boxes, cameras, users and audit pages (routes_console.py)
    "GET overview":           {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "GET fleet":              {A: OK, OP: OK, R: OK, V: OK, G: OK},
    "GET box":                {A: OK, OP: OK, R: OK, V: OK, G: OK},  # a1 is in gw-a's town-a
    "GET cameras":            {A: OK, OP: OK, R: OK, V: OK, G: FORBIDDEN},
    "GET camera sheet":       {A: OK, OP: OK, R: OK, V: OK, G: FORBIDDEN},
    "GET users":              {A: OK, OP: FORBIDDEN, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "POST users":             {A: CREATED, OP: FORBIDDEN, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "PATCH user":             {A: OK, OP: FORBIDDEN, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "GET audit":              {A: OK, OP: FORBIDDEN, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "GET audit check":        {A: OK, OP: FORBIDDEN, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    # signed updates (routes_releases.py): admin only
    "GET releases":           {A: OK, OP: FORBIDDEN, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
    "GET rollouts":           {A: OK, OP: FORBIDDEN, R: FORBIDDEN, V: FORBIDDEN, G: FORBIDDEN},
}
CAP_XML = ('<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>r-1</identifier><sender>s</sender>'
           "<sent>2026-12-01T15:00:00+08:00</sent><status>Exercise</status><msgType>Alert</msgType>"
           "<scope>Public</scope><info><event>演练</event><severity>Minor</severity><headline>演练</headline>"
           "</info></alert>")
SQUARE = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
    [[100.45, 21.95], [100.46, 21.95], [100.46, 21.96], [100.45, 21.96], [100.45, 21.95]]]}}


async def _objects(env: Env) -> dict[str, str]:
    await env.add_alarm("a1:new", "a1")
    await env.add_alarm("a1:acked", "a1", state="acknowledged", acked_by="operator")
    await env.add_alarm("a1:assigned", "a1", state="assigned", acked_by="operator", assigned_to="gw-a",
                        assigned_by="operator")
    held = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "待审核"})
    sent = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "紧急",
                                                             "class": "emergency"})
    assert (held.json()["state"], sent.json()["state"]) == ("awaiting_review", "sent")
    fence = await env.client.put("/api/v1/fences/f-obj", headers=env.auth("operator"), json={"feature": SQUARE})
    pushed = await env.post("operator", "/api/v1/fences/push", {"fences": ["f-obj"], "to": ["group:town-a"]})
    assert (fence.status_code, pushed.status_code) == (201, 201), (fence.text, pushed.text)
    return {"held": held.json()["id"], "sent": sent.json()["id"], "push": pushed.json()["id"]}


def _requests(ids: dict[str, str]) -> dict[str, tuple[str, str, Any]]:
    return {
        "GET boxes": ("GET", "/api/v1/boxes", None),
        "GET messages": ("GET", "/api/v1/messages?box=a1", None),
        "GET alarms": ("GET", "/api/v1/alarms?state=open", None),
        "POST alarm ack": ("POST", "/api/v1/alarms/a1:new/ack", {}),
        "POST alarm assign": ("POST", "/api/v1/alarms/a1:acked/assign", {"to": "gw-a"}),
        "POST alarm resolve": ("POST", "/api/v1/alarms/a1:assigned/resolve", {"note": "done"}),
        "POST broadcasts": ("POST", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "日常"}),
        "POST emergency": ("POST", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "急", "class": "emergency"}),
        "GET broadcasts": ("GET", "/api/v1/broadcasts", None),
        "GET broadcast": ("GET", f"/api/v1/broadcasts/{ids['sent']}", None),
        "POST broadcast approve": ("POST", f"/api/v1/broadcasts/{ids['held']}/approve", {}),
        "POST broadcast resend": ("POST", f"/api/v1/broadcasts/{ids['sent']}/resend", {}),
        "POST broadcast cancel": ("POST", f"/api/v1/broadcasts/{ids['sent']}/cancel", {}),
        "GET fences": ("GET", "/api/v1/fences", None),
        "PUT fence": ("PUT", "/api/v1/fences/f-new", {"name": "新", "feature": SQUARE}),
        "POST fences push": ("POST", "/api/v1/fences/push", {"fences": ["f-obj"], "to": ["box:a1"]}),
        "GET fence push": ("GET", f"/api/v1/fences/push/{ids['push']}", None),
        "DELETE fence": ("DELETE", "/api/v1/fences/f-obj", None),
        "GET map": ("GET", "/api/v1/map", None),
        "GET positions": ("GET", "/api/v1/positions", None),
        "GET alarm": ("GET", "/api/v1/alarms/a1:assigned", None),
        "GET alarm track": ("GET", "/api/v1/alarms/a1:assigned/track", None),
        "GET alarm assignees": ("GET", "/api/v1/alarms/a1:assigned/assignees", None),
        "POST tts preview": ("POST", "/api/v1/media/tts-preview", {"text": "你好"}),
        "POST audio upload": ("POST", "/api/v1/media/audio", {"audio_b64": base64.b64encode(media_wav()).decode()}),
        "POST cap import": ("POST", "/api/v1/media/cap", {"xml": CAP_XML}),
        "GET broadcast targets": ("GET", "/api/v1/broadcast-targets", None),
        "POST broadcast targets": ("POST", "/api/v1/broadcast-targets", {"regions": ["town-a"]}),
        "GET overview": ("GET", "/api/v1/overview", None),
        "GET fleet": ("GET", "/api/v1/fleet", None),
        "GET box": ("GET", "/api/v1/boxes/a1", None),
        "GET cameras": ("GET", "/api/v1/cameras", None),
        "GET camera sheet": ("GET", "/api/v1/reports/cameras/sheet?date=2026-12-01", None),
        "GET users": ("GET", "/api/v1/users", None),
        "POST users": ("POST", "/api/v1/users", {"name": "new-user", "role": "viewer", "password": "long enough"}),
        "PATCH user": ("PATCH", "/api/v1/users/rev-a", {"display_name": "甲审核"}),
        "GET audit": ("GET", "/api/v1/audit?limit=5", None),
        "GET audit check": ("GET", "/api/v1/audit/check", None),
        "GET releases": ("GET", "/api/v1/releases", None),
        "GET rollouts": ("GET", "/api/v1/rollouts", None),
    }


async def _events_status(base: str, headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client, \
            client.stream("GET", "/api/v1/events", headers=headers) as response:
        return response.status_code  # the stream is closed on leaving: only the status matters here


@pytest.mark.parametrize("role", ROLES)
async def test_every_route_for_every_role(review_env: Env, role: str) -> None:
    env = review_env
    ids = await _objects(env)
    user = ROLE_USER[role]
    got: dict[str, int] = {}
    for name, (method, path, body) in _requests(ids).items():
        r = await env.client.request(method, path, headers=env.auth(user), json=body)
        got[name] = r.status_code
        if r.status_code == FORBIDDEN:
            assert r.json()["error"] == "forbidden", (name, r.text)
    async with served(env) as base:
        got["GET events"] = await _events_status(base, env.auth(user))
    assert got == {name: per_role[role] for name, per_role in EXPECTED.items()}
    # refused writes changed nothing; allowed ones left their audit row
    held = (await env.rows(broadcasts, broadcasts.c.id == ids["held"]))[0]
    assert held["state"] == ("sent" if EXPECTED["POST broadcast approve"][role] == OK else "awaiting_review")
    actions = {a["action"] for a in await env.audit_rows() if a["actor"] == user}
    for name, action in (("POST alarm ack", "alarm.ack"), ("POST alarm assign", "alarm.assign"),
                         ("POST alarm resolve", "alarm.resolve"), ("POST broadcasts", "broadcast.create"),
                         ("POST broadcast approve", "broadcast.approve"), ("POST broadcast cancel", "broadcast.cancel"),
                         ("POST broadcast resend", "broadcast.resend"), ("PUT fence", "fence.create"),
                         ("POST fences push", "fence.push"), ("DELETE fence", "fence.delete"),
                         ("POST users", "user.add"), ("PATCH user", "user.update")):
        assert (action in actions) == (EXPECTED[name][role] in (OK, CREATED)), (name, action)


async def test_every_route_needs_a_session(review_env: Env) -> None:
    env = review_env
    ids = await _objects(env)
    requests = _requests(ids)
    requests["GET events"] = ("GET", "/api/v1/events", None)
    for name, (method, path, body) in requests.items():
        for headers in ({}, {"Authorization": "Bearer not-a-session"}):
            r = await env.client.request(method, path, headers=headers, json=body)
            assert r.status_code == 401, (name, headers)
