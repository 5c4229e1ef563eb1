"""The alarm list and lifecycle through the real app: ack -> assign (to a 网格员) -> resolve, 409s, scope,
gridworkers, the audit rows, the events on the hub; on SQLite and PostgreSQL."""

from __future__ import annotations

from county.store.tables import alarms
from tests.county_api import NOW_MS, Env, env_fixture  # noqa: F401 - the `env` fixture


async def test_list_open_newest_unacknowledged_first_with_contract_fields(env: Env) -> None:
    await env.add_alarm("a1:1", "a1", ts=NOW_MS - 50_000)
    await env.add_alarm("a1:2", "a1", ts=NOW_MS - 10_000, state="acknowledged", acked_by="operator",
                        acked_at=NOW_MS)
    await env.add_alarm("a2:7", "a2", ts=NOW_MS - 40_000)
    await env.add_alarm("b1:3", "b1", ts=NOW_MS - 30_000, state="resolved")
    r = await env.get("operator", "/api/v1/alarms", params={"state": "open"})
    assert r.status_code == 200
    got = r.json()
    assert [a["id"] for a in got] == ["a2:7", "a1:1", "a1:2"]
    assert {k: got[0][k] for k in ("id", "box", "kind", "wearer", "ts", "state", "pos")} == {
        "id": "a2:7", "box": "a2", "kind": "sos", "wearer": "w-1", "ts": NOW_MS - 40_000, "state": "new",
        "pos": {"lat": 21.9, "lon": 101.2}}
    assert got[0]["box_name"] == "甲二村委会" and got[0]["township"] == "town-a"
    default = (await env.get("operator", "/api/v1/alarms")).json()
    assert [a["id"] for a in default] == ["a2:7", "a1:1", "a1:2"]
    for state, ids in (("new", ["a2:7", "a1:1"]), ("acknowledged", ["a1:2"]), ("resolved", ["b1:3"]),
                       ("assigned", [])):
        assert [a["id"] for a in (await env.get("viewer", "/api/v1/alarms", params={"state": state})).json()] == ids
    assert (await env.get("viewer", "/api/v1/alarms", params={"state": "bogus"})).status_code == 400


async def test_list_is_scope_filtered(env: Env) -> None:
    await env.add_alarm("a1:1", "a1")
    await env.add_alarm("b1:1", "b1")
    await env.add_alarm("stray-9:1", "stray-9")
    assert {a["id"] for a in (await env.get("op-a", "/api/v1/alarms")).json()} == {"a1:1"}
    assert {a["id"] for a in (await env.get("admin", "/api/v1/alarms")).json()} == {"a1:1", "b1:1", "stray-9:1"}


async def test_full_lifecycle_who_and_when_stored_and_audited(env: Env) -> None:
    await env.add_alarm("a1:1", "a1")
    sub = env.hub.open(["alarm"])
    r = await env.post("operator", "/api/v1/alarms/a1:1/ack")
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert r.json()["acked_by"] == "operator" and r.json()["acked_at"] == NOW_MS
    event = sub.get_nowait()
    assert event is not None and event.kind == "alarm" and event.data["state"] == "acknowledged"
    r = await env.post("operator", "/api/v1/alarms/a1:1/assign", {"to": "gw-a"})
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["assigned_to"], r.json()["assigned_by"]) == ("assigned", "gw-a", "operator")
    r = await env.post("gw-a", "/api/v1/alarms/a1:1/resolve", {"note": "老人摔倒，已送医"})
    assert r.status_code == 200
    row = (await env.rows(alarms, alarms.c.id == "a1:1"))[0]
    assert (row["state"], row["resolved_by"], row["resolved_at"], row["note"]) == (
        "resolved", "gw-a", NOW_MS, "老人摔倒，已送医")
    trail = [(a["actor"], a["action"], a["target"], a["detail"]["from"], a["detail"]["to"])
             for a in await env.audit_rows() if a["action"].startswith("alarm.")]
    assert trail == [("operator", "alarm.ack", "a1:1", "new", "acknowledged"),
                     ("operator", "alarm.assign", "a1:1", "acknowledged", "assigned"),
                     ("gw-a", "alarm.resolve", "a1:1", "assigned", "resolved")]
    assert [e.data["state"] for e in iter(sub.get_nowait, None)] == ["assigned", "resolved"]
    sub.close()


async def test_transitions_not_allowed_are_409_and_change_nothing(env: Env) -> None:
    await env.add_alarm("a1:1", "a1")
    r = await env.post("operator", "/api/v1/alarms/a1:1/assign", {"to": "gw-a"})
    assert r.status_code == 409 and r.json()["state"] == "new"
    assert (await env.post("operator", "/api/v1/alarms/a1:1/resolve", {"note": "x"})).status_code == 409
    assert (await env.post("operator", "/api/v1/alarms/a1:1/ack")).status_code == 200
    r = await env.post("admin", "/api/v1/alarms/a1:1/ack")
    assert r.status_code == 409 and r.json()["error"] == "conflict" and r.json()["state"] == "acknowledged"
    assert (await env.post("operator", "/api/v1/alarms/a1:1/resolve", {"note": "误报"})).status_code == 200
    for action, body in (("ack", {}), ("assign", {"to": "gw-a"}), ("resolve", {"note": "again"})):
        r = await env.post("admin", f"/api/v1/alarms/a1:1/{action}", body)
        assert r.status_code == 409, action
    row = (await env.rows(alarms, alarms.c.id == "a1:1"))[0]
    assert (row["acked_by"], row["resolved_by"], row["note"], row["assigned_to"]) == (
        "operator", "operator", "误报", None)
    assert len([a for a in await env.audit_rows() if a["action"].startswith("alarm.")]) == 2
    assert (await env.post("admin", "/api/v1/alarms/nope:1/ack")).status_code == 404


async def test_assign_needs_a_gridworker_within_the_alarms_scope(env: Env) -> None:
    await env.add_alarm("a1:1", "a1", state="acknowledged")
    r = await env.post("operator", "/api/v1/alarms/a1:1/assign", {"to": "viewer"})
    assert r.status_code == 422 and r.json()["role"] == "viewer"
    r = await env.post("operator", "/api/v1/alarms/a1:1/assign", {"to": "gw-b"})  # town-b's gridworker
    assert r.status_code == 422 and "scope" in r.json()["detail"]
    assert (await env.post("operator", "/api/v1/alarms/a1:1/assign", {"to": "nobody"})).status_code == 422
    assert (await env.post("operator", "/api/v1/alarms/a1:1/assign", {})).status_code == 400
    assert (await env.post("operator", "/api/v1/alarms/a1:1/assign", {"to": "gw-a"})).status_code == 200
    r = await env.post("op-a", "/api/v1/alarms/a1:1/assign", {"to": "gw-a"})  # re-assign: allowed
    assert r.status_code == 200 and r.json()["assigned_by"] == "op-a"
    detail = (await env.audit_rows("alarm.assign"))[0]["detail"]
    assert detail["assigned_to"] == "gw-a" and detail["phone"].startswith("1380000")


async def test_gridworker_sees_and_resolves_only_alarms_assigned_to_them(env: Env) -> None:
    await env.add_alarm("a1:1", "a1", state="assigned", assigned_to="gw-a", assigned_by="operator")
    await env.add_alarm("a2:1", "a2", state="acknowledged")
    await env.add_alarm("a2:2", "a2", state="new")
    assert [a["id"] for a in (await env.get("gw-a", "/api/v1/alarms")).json()] == ["a1:1"]
    assert (await env.post("gw-a", "/api/v1/alarms/a2:1/resolve", {"note": "x"})).status_code == 403
    assert (await env.post("gw-a", "/api/v1/alarms/a2:2/ack")).status_code == 403
    assert (await env.post("gw-a", "/api/v1/alarms/a1:1/assign", {"to": "gw-a"})).status_code == 403
    assert (await env.post("gw-b", "/api/v1/alarms/a1:1/resolve", {"note": "x"})).status_code == 403
    assert (await env.post("gw-a", "/api/v1/alarms/a1:1/resolve", {"note": "到场处理"})).status_code == 200
    assert (await env.get("gw-a", "/api/v1/alarms", params={"state": "resolved"})).json()[0]["id"] == "a1:1"


async def test_scoped_operator_cannot_touch_another_townships_alarm(env: Env) -> None:
    await env.add_alarm("b1:1", "b1")
    r = await env.post("op-a", "/api/v1/alarms/b1:1/ack")
    assert r.status_code == 403
    assert (await env.rows(alarms, alarms.c.id == "b1:1"))[0]["state"] == "new"


async def test_bad_bodies(env: Env) -> None:
    await env.add_alarm("a1:1", "a1", state="acknowledged")
    r = await env.client.post("/api/v1/alarms/a1:1/resolve", headers=env.auth("operator"), content=b"{not json")
    assert r.status_code == 400
    r = await env.client.post("/api/v1/alarms/a1:1/resolve", headers=env.auth("operator"), content=b"[1]")
    assert r.status_code == 400
    assert (await env.post("operator", "/api/v1/alarms/a1:1/resolve", {"note": 5})).status_code == 400
    assert (await env.post("operator", "/api/v1/alarms/a1:1/resolve", {"note": "x" * 5000})).status_code == 400
    assert (await env.rows(alarms, alarms.c.id == "a1:1"))[0]["state"] == "acknowledged"
