"""Fences through the real app on SQLite and PostgreSQL: stored fences, checked as the console checks a file;
a push signed with the county key and published on a real mosquitto, which the box side verifies with the
public key and parses with the box's own geofence.set parser (agent/wearables/fences.py, what
WearablesCore.on_geofence_set runs); the per-box board from the receipts; scope refusals (audited)."""

from __future__ import annotations

import json
from typing import Any

from agent.protocol import jws
from agent.wearables.fences import INSIDE, OUTSIDE, check_assign, load_fences
from county.server import openapi
from county.store.tables import fence_pushes, fences
from tests.county_api import KID, NOW_MS, Env, box_side, env_fixture  # noqa: F401 - the `env` fixture
from tests.test_county_api_broadcasts import marker
from tests.test_county_openapi import check

NOW_S = NOW_MS // 1000
# a square around 勐海 (lon 100.45..100.46, lat 21.95..21.96) and a 300 m circle
SQUARE: dict[str, Any] = {"type": "Feature", "properties": {"note": "村委会周边"}, "geometry": {
    "type": "Polygon",
    "coordinates": [[[100.45, 21.95], [100.46, 21.95], [100.46, 21.96], [100.45, 21.96], [100.45, 21.95]]]}}
CIRCLE: dict[str, Any] = {"type": "Feature", "properties": {"radius_m": 300},
                          "geometry": {"type": "Point", "coordinates": [100.50, 21.90]}}


async def put(env: Env, user: str, fid: str, body: dict[str, Any]) -> Any:
    return await env.client.put(f"/api/v1/fences/{fid}", headers=env.auth(user), json=body)


async def test_push_reaches_the_box_signed_and_the_boxes_parser_accepts_it(env: Env) -> None:
    r = await put(env, "operator", "home", {"name": "勐海村委会", "feature": SQUARE})
    assert r.status_code == 201, r.text
    assert r.json()["feature"]["id"] == "home" and r.json()["feature"]["properties"]["name"] == "勐海村委会"
    r = await put(env, "operator", "well", {"name": "水井", "feature": CIRCLE, "crs": "WGS84"})
    assert r.status_code == 201, r.text
    listed = (await env.get("gw-a", "/api/v1/fences")).json()
    assert [(f["id"], f["name"], f["crs"], f["created_by"]) for f in listed] == [
        ("home", "勐海村委会", "WGS84", "operator"), ("well", "水井", "WGS84", "operator")]

    box = box_side(env.broker)
    try:
        r = await env.post("operator", "/api/v1/fences/push", {
            "fences": ["home", "well"], "assign": {"w-0042": ["home"], "w-0043": ["home", "well"]},
            "to": ["group:town-a", "box:b1"]})
        assert r.status_code == 201, r.text
        got = await marker(env, box)
    finally:
        box.stop()
    out = r.json()
    assert out["state"] == "sent" and out["boxes"] == ["a1", "a2", "b1"]
    assert sorted(m.topic for m in got) == ["vc/v1/box/b1/cmd", "vc/v1/group/town-a/cmd"]
    assert all(m.retain is False for m in got) and got[0].payload == got[1].payload
    _header, cmd = jws.verify(got[0].payload, {KID: env.public_key})
    assert (cmd["id"], cmd["kind"], cmd["to"]) == (out["id"], "geofence.set", ["group:town-a", "box:b1"])
    assert (cmd["iat"], cmd["exp"]) == (NOW_S, NOW_S + 86400)
    # the box's own parser (WearablesCore.on_geofence_set: load_fences, then check_assign)
    data = cmd["data"]
    parsed = load_fences(data["fences"], data["crs"])
    assign = check_assign(data["assign"], parsed)
    assert set(parsed) == {"home", "well"} and parsed["home"].name == "勐海村委会"
    assert parsed["well"].radius_m == 300.0
    assert parsed["home"].classify(21.955, 100.455, 0) == INSIDE
    assert parsed["home"].classify(21.97, 100.455, 0) == OUTSIDE
    assert assign == {"w-0042": ("home",), "w-0043": ("home", "well")}

    row = (await env.rows(fence_pushes, fence_pushes.c.id == out["id"]))[0]
    assert (row["created_by"], row["targets"], row["boxes"]) == ("operator", ["group:town-a", "box:b1"],
                                                                  ["a1", "a2", "b1"])
    assert row["fences"]["ids"] == ["home", "well"] and row["fences"]["collection"] == data["fences"]
    actions = [(a["actor"], a["action"], a["target"]) for a in await env.audit_rows()]
    assert actions == [("operator", "fence.create", "home"), ("operator", "fence.create", "well"),
                       ("operator", "fence.push", out["id"])]


async def test_the_board_has_one_row_per_box_applied_rejected_or_no_answer(env: Env) -> None:
    assert (await put(env, "admin", "home", {"feature": SQUARE})).status_code == 201
    r = await env.post("admin", "/api/v1/fences/push", {"fences": ["home"], "to": ["group:town-a", "box:b1"]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    await env.add_receipt(pid, "a1", "applied")
    await env.add_receipt(pid, "b1", "rejected", reason="invalid_fences")
    board = (await env.get("viewer", f"/api/v1/fences/push/{pid}")).json()
    assert [(x["box"], x["name"], x["state"], x["reason"]) for x in board["receipts"]] == [
        ("a1", "甲一村委会", "applied", None), ("a2", "甲二村委会", "no_answer", None),
        ("b1", "乙一村委会", "rejected", "invalid_fences")]
    assert board["fences"] == ["home"] and board["crs"] == "WGS84" and board["created_by"] == "admin"
    # a township user sees the rows of their township only; a push reaching none of it is 403
    assert [x["box"] for x in (await env.get("gw-a", f"/api/v1/fences/push/{pid}")).json()["receipts"]] == [
        "a1", "a2"]
    only_b = await env.post("admin", "/api/v1/fences/push", {"fences": ["home"], "to": ["box:b1"]})
    assert (await env.get("gw-a", f"/api/v1/fences/push/{only_b.json()['id']}")).status_code == 403
    assert (await env.get("viewer", "/api/v1/fences/push/nope")).status_code == 404


async def test_an_invalid_feature_is_422_with_the_reason_and_nothing_is_stored(env: Env) -> None:
    cases: list[tuple[Any, str]] = [
        ({"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [100.5, 21.9]}},
         "radius_m"),
        ({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[100.45, 21.95], [100.46, 21.95],
                                                                              [100.45, 21.95]]]}},
         "3 distinct positions"),
        ({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[100.4, 21.9], [100.5, 21.9]]}},
         "geometry must be one of"),
        ({"type": "Feature", "properties": {"radius_m": 50}, "geometry": {"type": "Point",
                                                                          "coordinates": [200.0, 21.9]}},
         "[lon, lat]"),
        ({"type": "FeatureCollection", "features": []}, "not a GeoJSON Feature"),
        ("a string", "not a GeoJSON Feature"),
        ({"type": "Feature", "properties": [1], "geometry": SQUARE["geometry"]}, "properties"),
    ]
    for feature, why in cases:
        r = await put(env, "operator", "bad", {"name": "坏", "feature": feature})
        assert r.status_code == 422, (feature, r.text)
        assert r.json()["reason"] == "invalid_feature" and why in r.json()["detail"], (why, r.json())
    r = await put(env, "operator", "bad", {"feature": SQUARE, "crs": "ETRS89"})
    assert r.status_code == 422 and r.json()["reason"] == "invalid_crs"
    for body in ({"name": "x"}, {"feature": SQUARE, "colour": "red"}, {"feature": SQUARE, "name": ""}):
        assert (await put(env, "operator", "bad", body)).status_code == 400, body
    assert (await put(env, "operator", "bad id!", {"feature": SQUARE})).status_code == 400
    assert await env.rows(fences) == [] and await env.audit_rows() == []


async def test_push_refusals_name_the_reason_and_send_nothing(env: Env) -> None:
    await put(env, "operator", "home", {"feature": SQUARE})
    await put(env, "operator", "far", {"feature": CIRCLE, "crs": "GCJ02"})
    box = box_side(env.broker)
    try:
        cases: list[tuple[dict[str, Any], int, str | None]] = [
            ({"fences": ["nope"], "to": ["box:a1"]}, 422, "unknown_fence"),
            ({"fences": ["home"], "assign": {"w-1": ["far"]}, "to": ["box:a1"]}, 422, "unknown_fence"),
            ({"fences": ["home", "far"], "to": ["box:a1"]}, 422, "mixed_crs"),
            ({"fences": ["home"], "to": ["group:nobody"]}, 422, "nobody_hears"),
            ({"fences": [], "to": ["box:a1"]}, 400, None),
            ({"fences": ["home"], "to": ["a1"]}, 400, None),
            ({"fences": ["home"], "to": ["box:a1"], "assign": {"w-1": "home"}}, 400, None),
            ({"fences": ["home"], "to": ["box:a1"], "ttl_s": 0}, 400, None),
        ]
        for body, status, reason in cases:
            r = await env.post("operator", "/api/v1/fences/push", body)
            assert r.status_code == status, (body, r.text)
            assert r.json().get("reason") == reason, (body, r.json())
        got = await marker(env, box)
    finally:
        box.stop()
    assert got == [] and await env.rows(fence_pushes) == []


async def test_scope_refusals_are_403_and_audited(env: Env) -> None:
    await put(env, "operator", "home", {"feature": SQUARE})
    box = box_side(env.broker)
    try:
        r = await env.post("op-a", "/api/v1/fences/push", {"fences": ["home"], "to": ["box:a1", "group:town-b"]})
        assert r.status_code == 403 and r.json()["outside_scope"] == ["b1"], r.text
        r = await env.post("op-a", "/api/v1/fences/push", {"fences": ["home"], "to": ["box:stray-9"]})
        assert r.status_code == 403  # an unregistered box is in the whole-county scope only
        for user in ("viewer", "reviewer", "gw-a"):
            r = await env.post(user, "/api/v1/fences/push", {"fences": ["home"], "to": ["box:a1"]})
            assert r.status_code == 403 and r.json()["error"] == "forbidden", user
        got = await marker(env, box)
    finally:
        box.stop()
    assert got == [] and await env.rows(fence_pushes) == []
    refused = await env.audit_rows("fence.push.refused")
    assert [(a["actor"], a["detail"]["outside_scope"]) for a in refused] == [("op-a", ["b1"]), ("op-a", ["stray-9"])]
    # a township operator may push inside the township, and change only the fences they made
    r = await env.post("op-a", "/api/v1/fences/push", {"fences": ["home"], "to": ["group:town-a"]})
    assert r.status_code == 201 and r.json()["boxes"] == ["a1", "a2"]
    r = await put(env, "op-a", "home", {"feature": CIRCLE})
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    assert (await env.client.delete("/api/v1/fences/home", headers=env.auth("op-a"))).status_code == 403
    assert (await put(env, "op-a", "mine", {"feature": CIRCLE})).status_code == 201
    assert (await put(env, "op-a", "mine", {"feature": SQUARE, "name": "改"})).status_code == 200
    for user in ("viewer", "reviewer", "gw-a"):
        assert (await put(env, user, "x", {"feature": SQUARE})).status_code == 403, user
    assert {f["id"]: f["created_by"] for f in (await env.get("admin", "/api/v1/fences")).json()} == {
        "home": "operator", "mine": "op-a"}


async def test_change_and_delete_are_audited(env: Env) -> None:
    assert (await put(env, "operator", "home", {"name": "一", "feature": SQUARE})).status_code == 201
    r = await put(env, "admin", "home", {"name": "二", "feature": CIRCLE, "crs": "BD09"})
    assert r.status_code == 200 and r.json()["feature"]["geometry"]["type"] == "Point"
    assert (r.json()["crs"], r.json()["created_by"], r.json()["updated_at"]) == ("BD09", "operator", NOW_MS)
    r = await env.client.delete("/api/v1/fences/home", headers=env.auth("admin"))
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert (await env.client.delete("/api/v1/fences/home", headers=env.auth("admin"))).status_code == 404
    assert await env.rows(fences) == []
    assert [(a["actor"], a["action"], a["detail"].get("name")) for a in await env.audit_rows()] == [
        ("operator", "fence.create", "一"), ("admin", "fence.update", "二"), ("admin", "fence.delete", "二")]


async def test_real_answers_match_the_openapi_document(env: Env) -> None:
    doc = openapi.document()

    def schema(path: str, method: str, code: str) -> dict[str, Any]:
        out: dict[str, Any] = doc["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]
        return out

    r = await put(env, "operator", "home", {"name": "家", "feature": SQUARE, "crs": "GCJ02"})
    check(doc, schema("/api/v1/fences/{id}", "put", "201"), r.json())
    r = await put(env, "operator", "home", {"name": "家", "feature": SQUARE, "crs": "GCJ02"})
    check(doc, schema("/api/v1/fences/{id}", "put", "200"), r.json())
    check(doc, schema("/api/v1/fences", "get", "200"), (await env.get("viewer", "/api/v1/fences")).json())
    r = await env.post("operator", "/api/v1/fences/push", {"fences": ["home"], "assign": {"w-1": ["home"]},
                                                           "to": ["group:town-a"]})
    check(doc, schema("/api/v1/fences/push", "post", "201"), r.json())
    await env.add_receipt(r.json()["id"], "a1", "applied")
    board = (await env.get("viewer", f"/api/v1/fences/push/{r.json()['id']}")).json()
    check(doc, schema("/api/v1/fences/push/{id}", "get", "200"), board)
    assert board["assign"] == {"w-1": ["home"]} and board["crs"] == "GCJ02"
    r = await put(env, "operator", "bad", {"feature": {"type": "Feature"}})
    assert r.status_code == 422
    check(doc, openapi.ref("Error"), r.json())
    r = await env.client.delete("/api/v1/fences/home", headers=env.auth("operator"))
    check(doc, schema("/api/v1/fences/{id}", "delete", "200"), r.json())


async def test_the_box_applies_the_push_and_its_receipt_reaches_the_board_through_ingest(env: Env,
                                                                                        tmp_path: Any) -> None:
    """The whole chain: PUT + push -> the signed geofence.set on the box's topic -> verified with the county's
    public key, parsed as the box parses a command, handled by the box's own wearables service
    (WearablesCore.on_geofence_set, over a recording uplink) -> its `applied` receipt on the box's up topic
    -> the real ingest -> the board shows `applied` for a1; a2 stays `no_answer`."""
    import asyncio
    import contextlib

    from agent.clock import ManualClock
    from agent.commands import parse_command
    from agent.wearables.service import WearablesCore
    from county.ingest import Ingest, IngestConfig
    from tests.test_wearables_service import context, make_config
    from tests.wearables_support import RecordingUplink

    ingest = Ingest(IngestConfig(urls=[env.broker.url], client_id="county-test-ingest", live=False), env.db, env.hub)
    await ingest.start()
    box = box_side(env.broker)
    try:
        await ingest.wait_subscribed()
        await put(env, "operator", "home", {"name": "村委会", "feature": SQUARE})
        r = await env.post("operator", "/api/v1/fences/push", {"fences": ["home"], "assign": {"W1": ["home"]},
                                                               "to": ["group:town-a"]})
        pid = r.json()["id"]
        (msg,) = await marker(env, box)
        header, body = jws.verify(msg.payload, {KID: env.public_key})
        command = parse_command(body, header["kid"])
        # the box a1's wearables service (its wearer W1 is in its config) applies it
        clock = ManualClock(wall=NOW_S + 2)
        ctx, uplink, _handlers = context(make_config(tmp_path), clock, RecordingUplink(box="a1"))
        core = WearablesCore(ctx)
        task = asyncio.create_task(core.run(lambda: None))
        try:
            await core.on_geofence_set(command)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        receipt = uplink.sent[-1]
        assert (receipt.kind, receipt.data["cmd"], receipt.data["state"]) == ("cmd", pid, "applied")
        assert set(core.engine.fences) == {"home"}
        envelope = receipt.to_json() | {"seq": 500, "id": "a1:500"}
        box.publish("vc/v1/box/a1/up/receipt/cmd", json.dumps(envelope))
        async with asyncio.timeout(10):
            while True:
                board = {x["box"]: x["state"] for x in (await env.get("viewer", f"/api/v1/fences/push/{pid}"))
                         .json()["receipts"]}
                if board["a1"] != "no_answer":
                    break
                await ingest.committed.wait()
                ingest.committed.clear()
        assert board == {"a1": "applied", "a2": "no_answer"}
    finally:
        box.stop()
        await ingest.close()


async def test_resend_republishes_the_same_token_to_the_boxes_that_did_not_answer(env: Env) -> None:
    import base64

    assert (await put(env, "admin", "home", {"feature": SQUARE})).status_code == 201
    r = await env.post("admin", "/api/v1/fences/push", {"fences": ["home"], "to": ["group:town-a", "box:b1"]})
    pid = r.json()["id"]
    token = (await env.rows(fence_pushes, fence_pushes.c.id == pid))[0]["token"]
    await env.add_receipt(pid, "a1", "applied")
    await env.add_receipt(pid, "b1", "rejected", reason="invalid_fences")  # an answer: not sent again
    box = box_side(env.broker)
    try:
        r = await env.post("admin", f"/api/v1/fences/push/{pid}/resend")
        assert r.status_code == 200, r.text
        assert r.json() == {"id": pid, "resent_to": ["a2"]}
        got = await marker(env, box)
    finally:
        box.stop()
    assert [m.topic for m in got] == ["vc/v1/box/a2/cmd"]
    assert got[0].payload.decode() == token and not got[0].retain
    b64 = jws.split(token)[2]
    assert json.loads(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))["id"] == pid  # what the board tracks
    audit = (await env.audit_rows("fence.push.resend"))[0]
    assert audit["detail"]["count"] == 1 and audit["detail"]["boxes"] == ["a2"]
    for user in ("viewer", "reviewer", "gw-a"):
        assert (await env.post(user, f"/api/v1/fences/push/{pid}/resend")).status_code == 403
    assert (await env.post("admin", "/api/v1/fences/push/nope/resend")).status_code == 404


async def test_resend_of_an_expired_fence_push_is_409(env: Env) -> None:
    assert (await put(env, "admin", "home", {"feature": SQUARE})).status_code == 201
    r = await env.post("admin", "/api/v1/fences/push", {"fences": ["home"], "to": ["box:a1"], "ttl_s": 60})
    pid = r.json()["id"]
    env.app.state.clock = lambda: NOW_MS + 61_000
    r = await env.post("admin", f"/api/v1/fences/push/{pid}/resend")
    assert r.status_code == 409 and r.json()["state"] == "expired"
