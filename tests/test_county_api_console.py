"""The routes the web console reads and changes (county/server/routes_console.py), on SQLite and PostgreSQL:
the overview's tree and counts within a user's scope, a box's page, user management (checks, audit rows,
sessions ended, no password anywhere, no self lock-out, a scoped admin kept to their scope), the audit
log's filters and paging and its chain check, and the camera assessment sheet's layout."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import insert, update

from county.store.tables import audit, camera_periods, camera_states, messages, positions_latest, users
from tests.county_api import NOW_MS, PASSWORD, Env, env_fixture  # noqa: F401 - the `env` fixture


async def test_overview_tree_counts_and_scope(env: Env) -> None:
    await env.insert(camera_states, [
        {"box": "a1", "camera": "c1", "state": "online", "reason": None, "since": NOW_MS, "updated": NOW_MS},
        {"box": "b1", "camera": "c1", "state": "offline", "reason": "timeout", "since": NOW_MS, "updated": NOW_MS}])
    await env.insert(positions_latest, [
        {"box": "a1", "wearer": "w-1", "lat": 21.9, "lon": 100.4, "ts": NOW_MS - 60_000},
        {"box": "a1", "wearer": "w-2", "lat": 21.9, "lon": 100.4, "ts": NOW_MS - 7_200_000}])  # not reporting
    await env.add_alarm("a2:1", "a2")
    await env.add_alarm("a2:2", "a2", state="resolved")
    r = await env.get("admin", "/api/v1/overview")
    assert r.status_code == 200, r.text
    o = r.json()
    assert o["county"] == {"id": "menghai", "name": "勐海县"}
    c = o["counts"]
    assert (c["boxes"], c["boxes_online"], c["cameras"], c["cameras_online"], c["wearers"], c["alarms_open"]) == \
        (4, 3, 2, 1, 1, 1)  # a1 a2 b1 and the unregistered stray-9
    assert c["backlog"] == 15 and c["last_seen"] == NOW_MS - 1000
    town_a = o["townships"][0]
    assert (town_a["name"], [v["name"] for v in town_a["villages"]]) == ("甲镇", ["甲一村", "甲二村"])
    va2 = town_a["villages"][1]
    assert va2["counts"]["alarms_open"] == 1 and va2["boxes"] == [
        {"id": "a2", "name": "甲二村委会", "state": "offline", "last_seen": NOW_MS - 10**5, "backlog": 12}]
    assert [b["id"] for b in o["unregistered"]["boxes"]] == ["stray-9"]
    scoped = (await env.get("op-a", "/api/v1/overview")).json()
    assert [t["id"] for t in scoped["townships"]] == ["town-a"] and scoped["unregistered"] is None
    assert scoped["counts"]["boxes"] == 2


async def test_box_page_data_and_scope(env: Env) -> None:
    await env.insert(messages, [
        {"id": f"a1:{i}", "box": "a1", "seq": i, "ts": NOW_MS - 1000 * (10 - i), "class": "telemetry",
         "kind": "heartbeat", "received": NOW_MS, "raw": json.dumps({"data": {"uptime_s": i}})} for i in range(1, 4)])
    frame = json.dumps({"data": {"raw": "SECRET-FRAME", "wearer": "w"}})
    await env.insert(messages, {"id": "a1:4", "box": "a1", "seq": 4, "ts": NOW_MS, "class": "alarm", "kind": "sos",
                                "received": NOW_MS, "raw": frame})
    b = (await env.get("operator", "/api/v1/boxes/a1")).json()
    assert (b["name"], b["village_name"], b["township_name"]) == ("甲一村委会", "甲一村", "甲镇")
    assert [e["seq"] for e in b["timeline"]] == [4, 3, 2, 1]
    assert b["timeline"][1]["data"] == {"uptime_s": 3} and b["timeline"][0]["data"] == {}  # no alarm frame
    gw = await env.get("gw-a", "/api/v1/boxes/a1")
    assert gw.status_code == 200 and gw.json()["timeline"] is None  # boxes.read without messages.read
    assert (await env.get("op-a", "/api/v1/boxes/b1")).status_code == 403
    assert (await env.get("admin", "/api/v1/boxes/nope")).status_code == 404
    assert (await env.get("admin", "/api/v1/boxes/bad%20id")).status_code == 400


async def test_user_management_is_checked_audited_and_ends_sessions(env: Env) -> None:
    created = await env.post("admin", "/api/v1/users", {"name": "zhou", "role": "gridworker", "scope": "town-b",
                                                        "display_name": "周", "password": "a long password"})
    assert created.status_code == 201, created.text
    assert created.json() | {"created_at": 0} == {"name": "zhou", "role": "gridworker", "scope": "town-b",
                                                 "display_name": "周", "phone": None, "disabled": False,
                                                 "created_at": 0}
    for body, status in (({"name": "zhou", "role": "viewer", "password": "a long password"}, 409),
                         ({"name": "x y", "role": "viewer", "password": "a long password"}, 400),
                         ({"name": "li2", "role": "boss", "password": "a long password"}, 400),
                         ({"name": "li2", "role": "viewer", "password": "short"}, 400),
                         ({"name": "li2", "role": "viewer", "password": "a long password", "scope": "nowhere"}, 400),
                         ({"name": "li2", "role": "viewer", "password": "a long password", "is_root": True}, 400)):
        r = await env.post("admin", "/api/v1/users", body)
        assert r.status_code == status, (body, r.text)
    login = await env.client.post("/api/v1/session", json={"username": "zhou", "password": "a long password"})
    token = login.json()["token"]
    assert (await env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    changed = await env.client.patch("/api/v1/users/zhou", headers=env.auth("admin"),
                                     json={"role": "viewer", "password": "another long one"})
    assert changed.status_code == 200 and changed.json()["role"] == "viewer"
    assert (await env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    assert (await env.client.patch("/api/v1/users/admin", headers=env.auth("admin"),
                                   json={"disabled": True})).status_code == 409
    assert (await env.client.patch("/api/v1/users/admin", headers=env.auth("admin"),
                                   json={"role": "viewer"})).status_code == 409
    assert (await env.client.patch("/api/v1/users/ghost", headers=env.auth("admin"),
                                   json={"disabled": True})).status_code == 404
    rows = [r for r in await env.audit_rows() if r["target"] == "zhou"]
    assert [(r["actor"], r["action"]) for r in rows] == [("admin", "user.add"), ("admin", "user.update")]
    assert rows[1]["detail"] == {"role": "viewer", "password": "changed", "sessions_ended": True}
    text = json.dumps([r["detail"] for r in await env.audit_rows()], ensure_ascii=False)
    assert "a long password" not in text and "another long one" not in text
    listed = (await env.get("admin", "/api/v1/users")).json()
    assert "password_hash" not in listed[0] and "zhou" in [u["name"] for u in listed]


async def test_a_scoped_admin_manages_only_their_scope(env: Env) -> None:
    from county.server.users import create_session

    async with env.db.begin() as conn:
        await conn.execute(insert(users), {"name": "adm-a", "role": "admin", "scope": "town-a",
                                           "password_hash": "x", "disabled": False, "created_at": NOW_MS})
        env.tokens["adm-a"] = (await create_session(conn, "adm-a", NOW_MS, 3_600_000)).token
    ok = await env.post("adm-a", "/api/v1/users", {"name": "gw-a2", "role": "gridworker", "scope": "va1",
                                                   "password": "a long password"})
    assert ok.status_code == 201, ok.text
    for scope in (None, "town-b", "vb1"):
        r = await env.post("adm-a", "/api/v1/users", {"name": "far", "role": "viewer", "scope": scope,
                                                      "password": "a long password"})
        assert r.status_code == 403, scope
    assert (await env.client.patch("/api/v1/users/gw-b", headers=env.auth("adm-a"),
                                   json={"disabled": True})).status_code == 403
    names = {u["name"] for u in (await env.get("adm-a", "/api/v1/users")).json()}
    assert names == {"adm-a", "gw-a", "op-a", "rev-a", "gw-a2"}


async def test_audit_log_filters_pages_and_checks_its_chain(env: Env) -> None:
    for name in ("u1", "u2", "u3"):
        assert (await env.post("admin", "/api/v1/users", {"name": name, "role": "viewer",
                                                          "password": "a long password"})).status_code == 201
    await env.client.post("/api/v1/session", json={"username": "u1", "password": "wrong password"})
    page = (await env.get("admin", "/api/v1/audit?action=user.add&limit=2")).json()
    assert [r["target"] for r in page["rows"]] == ["u3", "u2"] and page["next_before"] is not None
    rest = (await env.get("admin", f"/api/v1/audit?action=user.add&limit=2&before={page['next_before']}")).json()
    assert [r["target"] for r in rest["rows"]] == ["u1"] and rest["next_before"] is None
    logins = (await env.get("admin", "/api/v1/audit?action=login.")).json()["rows"]
    assert [r["action"] for r in logins] == ["login.failed"] and logins[0]["detail"]["reason"] == "wrong password"
    assert (await env.get("admin", "/api/v1/audit?actor=nobody")).json()["rows"] == []
    assert (await env.get("admin", "/api/v1/audit?limit=0")).status_code == 400
    check = (await env.get("admin", "/api/v1/audit/check")).json()
    assert check["ok"] is True and check["rows"] == 4 and check["broken"] is None
    async with env.db.begin() as conn:
        await conn.execute(update(audit).where(audit.c.seq == 2).values(actor="mallory"))
    check = (await env.get("admin", "/api/v1/audit/check")).json()
    assert check["ok"] is False and check["broken"]["seq"] == 2 and check["broken"]["kind"] == "edited"


async def test_the_camera_assessment_sheet_is_laid_out_by_township(env: Env) -> None:
    day0 = NOW_MS - 4 * 3_600_000  # 12:00 in Asia/Shanghai on 2026-12-01
    await env.insert(camera_periods, [
        {"box": "a1", "camera": "c1", "period_from": day0, "period_to": day0 + 900_000, "seconds": {"online": 900},
         "state": "online"},
        {"box": "b1", "camera": "c1", "period_from": day0, "period_to": day0 + 900_000,
         "seconds": {"online": 300, "offline": 600}, "state": "offline"}])
    r = await env.get("viewer", "/api/v1/reports/cameras/sheet?date=2026-12-01&format=csv")
    assert r.status_code == 200 and r.content.startswith(b"\xef\xbb\xbf")
    assert r.headers["content-disposition"] == 'attachment; filename="camera-assessment-day-2026-12-01.csv"'
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == ["勐海县 摄像头在线率考核表（2026年12月01日）"]
    assert rows[2][:7] == ["序号", "乡镇", "村", "摄像头数", "时点在线率", "时长加权在线率", "覆盖率"]
    assert [r[:6] for r in rows[3:]] == [
        ["1", "甲镇", "甲一村", "1", "1.0", "1.0"], ["2", "甲镇", "甲二村", "0", "", ""],
        ["", "甲镇 小计", "", "1", "1.0", "1.0"], ["3", "乙镇", "乙一村", "1", "0.0", "0.3333"],
        ["", "乙镇 小计", "", "1", "0.0", "0.3333"], ["", "全县合计", "", "2", "0.5", "0.6667"]]
    en = await env.get("viewer", "/api/v1/reports/cameras/sheet?date=2026-12-01&format=csv&lang=en")
    assert en.content.decode("utf-8-sig").splitlines()[2].startswith("No.,Township,Village,Number of cameras")
    scoped = await env.get("op-a", "/api/v1/reports/cameras/sheet?date=2026-12-01&format=csv")
    body = scoped.content.decode("utf-8-sig")
    assert "乙镇" not in body and "全县合计" not in body and "甲镇 小计" in body
    assert (await env.get("op-a", "/api/v1/reports/cameras/sheet?region=town-b")).status_code == 403
    assert (await env.get("viewer", "/api/v1/reports/cameras/sheet?format=pdf")).status_code == 400
    xlsx = await env.get("viewer", "/api/v1/reports/cameras/sheet?date=2026-12-01")
    assert xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert PASSWORD not in xlsx.text
