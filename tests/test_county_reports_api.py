"""GET /api/v1/reports/* through the real app (tests/county_api.py: real database on SQLite and PostgreSQL,
real sessions): JSON, CSV and XLSX, the user's scope, roles, bad input. The app's clock is 2026-12-01
16:00 in Asia/Shanghai (08:00 UTC)."""

from __future__ import annotations

import csv
import io
import json

import openpyxl

from county.store.tables import camera_periods, messages
from tests.county_api import NOW_MS, Env, env_fixture  # noqa: F401 - the `env` fixture

MIN = 60_000
LOCAL_MIDNIGHT = NOW_MS - 16 * 3_600_000  # 2026-12-01 00:00 Asia/Shanghai


async def _cameras(env: Env) -> None:
    rows = [("a1", "c1", LOCAL_MIDNIGHT + 60 * MIN, {"online": 600, "offline": 300}, "online"),
            ("a2", "c1", LOCAL_MIDNIGHT + 120 * MIN, {"offline": 900}, "offline"),
            ("b1", "c1", LOCAL_MIDNIGHT + 180 * MIN, {"online": 900}, "online"),
            # 23:40 on Nov 30 local: the same UTC day (Nov 30 15:40 UTC), not the county's Dec 1
            ("b1", "c1", LOCAL_MIDNIGHT - 20 * MIN, {"offline": 900}, "offline")]
    await env.insert(camera_periods, [{"box": b, "camera": c, "period_from": f, "period_to": f + 15 * MIN,
                                       "seconds": s, "state": st} for b, c, f, s, st in rows])


async def test_camera_report_json_for_today_in_the_county_timezone(env: Env) -> None:
    await _cameras(env)
    r = await env.get("viewer", "/api/v1/reports/cameras")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["report"], body["period"], body["date"], body["timezone"]) == ("cameras", "day", "2026-12-01",
                                                                                "Asia/Shanghai")
    assert body["from"] == LOCAL_MIDNIGHT and body["to"] == LOCAL_MIDNIGHT + 86_400_000
    got = {row["id"]: row for row in body["rows"]}
    assert list(got) == ["menghai", "town-a", "va1", "va2", "town-b", "vb1"]
    assert got["va1"]["online_rate_tw"] == round(600 / 900, 4) and got["va1"]["online_rate_pit"] == 1.0
    assert got["town-a"]["online_rate_tw"] == round(600 / 1800, 4) and got["town-a"]["online_rate_pit"] == 0.5
    assert got["vb1"]["online_rate_tw"] == 1.0 and got["vb1"]["samples"] == 1  # Nov 30 23:40 left out
    assert got["menghai"]["online_rate_tw"] == round(1500 / 2700, 4)
    same = (await env.get("viewer", "/api/v1/reports/cameras", params={"period": "day", "date": "2026-12-01"})).json()
    assert same == body
    month = (await env.get("viewer", "/api/v1/reports/cameras", params={"period": "month", "date": "2026-12"})).json()
    assert month["date"] == "2026-12" and {r["id"]: r for r in month["rows"]}["menghai"]["samples"] == 3
    assert body["columns"] == list(body["rows"][0])


async def test_reports_follow_the_users_scope_and_region(env: Env) -> None:
    await _cameras(env)
    ids = [row["id"] for row in (await env.get("op-a", "/api/v1/reports/cameras")).json()["rows"]]
    assert ids == ["town-a", "va1", "va2"]
    r = await env.get("op-a", "/api/v1/reports/cameras", params={"region": "va2"})
    assert [row["id"] for row in r.json()["rows"]] == ["va2"]
    r = await env.get("op-a", "/api/v1/reports/cameras", params={"region": "town-b"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert (await env.get("op-a", "/api/v1/reports/alarms", params={"region": "menghai"})).status_code == 403
    r = await env.get("admin", "/api/v1/reports/boxes", params={"region": "town-b"})
    assert [row["id"] for row in r.json()["rows"]] == ["town-b", "vb1"]
    rows = (await env.get("admin", "/api/v1/reports/boxes", params={"region": "menghai"})).json()["rows"]
    assert len(rows) == 6


async def test_roles(env: Env) -> None:
    for user in ("admin", "operator", "reviewer", "viewer"):
        for kind in ("cameras", "boxes", "alarms"):
            assert (await env.get(user, f"/api/v1/reports/{kind}")).status_code == 200
    r = await env.get("gw-a", "/api/v1/reports/alarms")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert (await env.get(None, "/api/v1/reports/cameras")).status_code == 401


async def test_bad_input_is_a_400_naming_the_parameter(env: Env) -> None:
    for params, word in (({"period": "week"}, "period"), ({"date": "2026-13-01"}, "date"),
                         ({"date": "1 Dec"}, "date"), ({"format": "pdf"}, "format"),
                         ({"region": "nowhere"}, "region"), ({"period": "day", "date": "2026-12"}, "date")):
        r = await env.get("admin", "/api/v1/reports/cameras", params=params)
        assert r.status_code == 400 and word in r.json()["detail"], (params, r.text)


async def test_csv_and_xlsx_downloads(env: Env) -> None:
    await _cameras(env)
    r = await env.get("viewer", "/api/v1/reports/cameras", params={"format": "csv", "date": "2026-12-01"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="cameras-day-2026-12-01.csv"'
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][:4] == ["level", "id", "name", "township"]
    assert [row[2] for row in rows[1:]] == ["勐海县", "甲镇", "甲一村", "甲二村", "乙镇", "乙一村"]
    r = await env.get("viewer", "/api/v1/reports/alarms", params={"format": "xlsx", "period": "month"})
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('alarms-month-2026-12.xlsx"')
    ws = openpyxl.load_workbook(io.BytesIO(r.content)).active
    assert ws is not None and ws.cell(row=1, column=1).value == "level"


async def test_box_and_alarm_reports_through_the_api(env: Env) -> None:
    # a1 was first seen at NOW - 1e6 ms (15:43:20 local): 4 slots up to 16:00, heartbeats in 2 of them
    hbs = [NOW_MS - 19 * MIN, NOW_MS - 8 * MIN, NOW_MS - 7 * MIN]
    await env.insert(messages, [{"id": f"a1:{i}", "box": "a1", "seq": i, "ts": t, "class": "telemetry",
                                 "kind": "heartbeat", "received": t, "raw": json.dumps({"seq": i})}
                                for i, t in enumerate(hbs)])
    va1 = {r["id"]: r for r in (await env.get("viewer", "/api/v1/reports/boxes")).json()["rows"]}["va1"]
    assert (va1["slots_expected"], va1["slots_online"], va1["online_rate"]) == (4, 2, 0.5)
    await env.add_alarm("a1:9", "a1", ts=NOW_MS - 600_000, state="acknowledged", acked_at=NOW_MS - 540_000)
    await env.add_alarm("b1:9", "b1", ts=NOW_MS - 600_000, state="resolved", acked_at=NOW_MS - 580_000,
                        resolved_at=NOW_MS)
    rows = {(r["id"], r["kind"]): r for r in (await env.get("viewer", "/api/v1/reports/alarms")).json()["rows"]}
    assert rows[("town-a", "sos")]["ack_median_s"] == 60 and rows[("town-b", "*")]["resolve_median_s"] == 600
    assert rows[("menghai", "*")]["ack_median_s"] == (20 + 60) / 2
