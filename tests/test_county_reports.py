"""county/reports.py on SQLite and PostgreSQL: rows inserted straight into the tables, figures worked out by
hand below (each expected value is written as the sum it comes from), the county's day (Asia/Shanghai,
UTC+8) against the UTC day, CSV and XLSX export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import openpyxl
import pytest
from sqlalchemy import insert

from county import reports
from county.regions import Regions, parse_regions
from county.store import Database
from county.store.tables import alarms, boxes, camera_periods, messages
from tests.county_api import REGIONS

TZ = "Asia/Shanghai"
SH = dt.timezone(dt.timedelta(hours=8))
DEC1 = dt.date(2026, 12, 1)
MIN = 60_000


def L(day: int, h: int, mi: int = 0, s: int = 0, month: int = 12) -> int:  # local time in Shanghai
    return int(dt.datetime(2026, month, day, h, mi, s, tzinfo=SH).timestamp() * 1000)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    d = await Database.open(db_url)
    try:
        yield d
    finally:
        await d.close()


@pytest.fixture
def regions() -> Regions:
    return parse_regions(REGIONS)


async def put(db: Database, table: Any, rows: list[dict[str, Any]]) -> None:
    async with db.begin() as conn:
        await conn.execute(insert(table), rows)


def by_id(report: reports.Report) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in report.rows}


# ------------------------------------------------------------------------------------------ cameras
def period(box: str, cam: str, start: int, minutes: int, state: str, **seconds: float) -> dict[str, Any]:
    return {"box": box, "camera": cam, "period_from": start, "period_to": start + minutes * MIN,
            "seconds": seconds, "state": state}


CAMERA_ROWS = [
    # a1 (va1, town-a): 23:55 Nov 30 -> 00:10 Dec 1 local, 2/3 of it in Dec 1; its end (a sample) in Dec 1
    period("a1", "cam1", L(30, 23, 55, month=11), 15, "online", online=600, offline=300),
    period("a1", "cam1", L(1, 0, 10), 15, "online", online=900),   # 16:10-16:25 UTC on Nov 30
    period("a1", "cam1", L(1, 12, 0), 15, "offline", offline=900),
    period("a1", "cam1", L(30, 10, 0, month=11), 15, "online", online=900),  # Nov 30: in no December bucket
    # a2 (va2, town-a): half of it unknown (the box was not watching)
    period("a2", "cam1", L(1, 10, 0), 15, "degraded", degraded=450, unknown=450),
    # b1 (vb1, town-b): 23:50 Dec 1 -> 00:05 Dec 2, 2/3 in Dec 1, its sample in Dec 2; one in maintenance
    period("b1", "camA", L(1, 23, 50), 15, "online", online=900),
    period("b1", "camB", L(1, 8, 0), 15, "maintenance", maintenance=900),
    # an unregistered box: the county's row only
    period("stray-9", "c", L(1, 9, 0), 15, "online", online=900),
]


async def test_camera_rates_per_village_township_county_for_the_shanghai_day(db: Database, regions: Regions) -> None:
    await put(db, camera_periods, CAMERA_ROWS)
    rep = await reports.camera_report(db, regions, "day", DEC1, TZ)
    assert rep.bucket.start_ms == L(1, 0) and rep.bucket.end_ms == L(2, 0)
    assert [r["id"] for r in rep.rows] == ["menghai", "town-a", "va1", "va2", "town-b", "vb1"]
    got = by_id(rep)

    va1 = got["va1"]  # samples: 00:10 online, 00:25 online, 12:15 offline; seconds 2/3 of P1 + P2 + P3
    assert (va1["cameras"], va1["samples"], va1["samples_online"]) == (1, 3, 2)
    assert va1["online_rate_pit"] == round(2 / 3, 4)
    assert (va1["online_s"], va1["offline_s"]) == (600 * 2 / 3 + 900, 300 * 2 / 3 + 900)  # 1300, 1100
    assert va1["online_rate_tw"] == round(1300 / 2400, 4) and va1["coverage"] == 1.0

    va2 = got["va2"]  # degraded counts as not online; unknown is out of the rate
    assert (va2["samples"], va2["online_rate_pit"], va2["online_rate_tw"]) == (1, 0.0, 0.0)
    assert (va2["degraded_s"], va2["unknown_s"], va2["coverage"]) == (450, 450, 0.5)

    ta = got["town-a"]
    assert (ta["cameras"], ta["samples"], ta["samples_online"], ta["online_rate_pit"]) == (2, 4, 2, 0.5)
    assert ta["online_rate_tw"] == round(1300 / (1300 + 450 + 1100), 4)
    assert ta["coverage"] == round((1300 + 450 + 1100) / (1300 + 450 + 1100 + 450), 4)

    vb1 = got["vb1"]  # camA's sample is in Dec 2, camB's is maintenance: no known sample at all
    assert (vb1["cameras"], vb1["samples"], vb1["online_rate_pit"]) == (2, 0, None)
    assert (vb1["online_s"], vb1["maintenance_s"]) == (600, 900)
    assert vb1["online_rate_tw"] == 1.0 and vb1["coverage"] == round(600 / 1500, 4)
    assert got["town-b"]["online_rate_tw"] == 1.0

    county = got["menghai"]  # town-a + town-b + the unregistered box
    assert (county["cameras"], county["samples"], county["samples_online"]) == (5, 5, 3)
    assert county["online_rate_pit"] == 0.6
    assert county["online_s"] == 1300 + 600 + 900
    assert county["online_rate_tw"] == round(2800 / (2800 + 450 + 1100), 4)
    assert county["coverage"] == round(4350 / (4350 + 450 + 900), 4)
    assert county["name"] == "勐海县" and got["va1"]["name"] == "甲一村" and got["va1"]["township"] == "town-a"


async def test_the_utc_day_is_not_the_county_day(db: Database, regions: Regions) -> None:
    """Dec 1 in UTC is 08:00 Dec 1 -> 08:00 Dec 2 in Shanghai: a1's two night periods fall out of it."""
    await put(db, camera_periods, CAMERA_ROWS)
    utc = by_id(await reports.camera_report(db, regions, "day", DEC1, "UTC"))
    assert (utc["va1"]["samples"], utc["va1"]["online_rate_pit"], utc["va1"]["online_rate_tw"]) == (1, 0.0, 0.0)
    assert utc["vb1"]["samples"] == 1 and utc["vb1"]["online_s"] == 900  # all of camA, its sample at 00:05
    nov30 = by_id(await reports.camera_report(db, regions, "day", dt.date(2026, 11, 30), TZ))
    assert nov30["va1"]["online_s"] == 600 / 3 + 900 and nov30["va1"]["samples"] == 1


async def test_camera_month(db: Database, regions: Regions) -> None:
    await put(db, camera_periods, CAMERA_ROWS)
    rep = await reports.camera_report(db, regions, "month", dt.date(2026, 12, 17), TZ)
    assert (rep.bucket.start_ms, rep.bucket.end_ms) == (L(1, 0), int(dt.datetime(2027, 1, 1, tzinfo=SH).timestamp()
                                                                        * 1000))
    county = by_id(rep)["menghai"]
    # samples: a1 x3 (2 online), a2 degraded, camA online, stray online (camB maintenance); Nov 30's left out
    assert (county["samples"], county["samples_online"]) == (6, 4)
    assert county["online_s"] == 400 + 900 + 900 + 900 and county["offline_s"] == 200 + 900
    assert county["online_rate_tw"] == round(3100 / (3100 + 450 + 1100), 4)
    assert rep.to_json()["date"] == "2026-12"


async def test_camera_report_limited_to_a_scope(db: Database, regions: Regions) -> None:
    await put(db, camera_periods, CAMERA_ROWS)
    rep = await reports.camera_report(db, regions, "day", DEC1, TZ, scope="town-a")
    assert [r["id"] for r in rep.rows] == ["town-a", "va1", "va2"]
    rep = await reports.camera_report(db, regions, "day", DEC1, TZ, scope="vb1")
    assert [r["id"] for r in rep.rows] == ["vb1"]


async def test_a_period_with_junk_seconds_counts_what_it_can(db: Database, regions: Regions) -> None:
    await put(db, camera_periods, [period("a1", "cam1", L(1, 1, 0), 15, "online", online=900, bogus=5, offline=-3)])
    va1 = by_id(await reports.camera_report(db, regions, "day", DEC1, TZ))["va1"]
    assert (va1["online_s"], va1["offline_s"], va1["online_rate_tw"]) == (900, 0, 1.0)


# ------------------------------------------------------------------------------------------ boxes
def hb(box: str, seq: int, received: int, cls: str = "telemetry", kind: str = "heartbeat") -> dict[str, Any]:
    return {"id": f"{box}:{seq}", "box": box, "seq": seq, "ts": received, "class": cls, "kind": kind,
            "received": received, "raw": json.dumps({"id": f"{box}:{seq}"})}


BOX_ROWS = [
    {"id": "a1", "state": "online", "first_seen": L(1, 0, month=11)},
    {"id": "a2", "state": "online", "first_seen": L(1, 12, 0)},   # new at noon: half a day expected
    {"id": "stray-9", "state": "online", "first_seen": L(1, 0, month=11)},
    # b1 is registered and never reported: no row, the whole day expected
]
HEARTBEATS = [
    hb("a1", 1, L(30, 23, 58, month=11)),       # Nov 30
    hb("a1", 2, L(1, 0, 0, 30)), hb("a1", 3, L(1, 0, 2)),   # one slot (00:00-00:05)
    hb("a1", 4, L(1, 0, 6)),                    # 00:05-00:10
    hb("a1", 5, L(1, 23, 59)),                  # the day's last slot
    hb("a1", 6, L(2, 0, 1)),                    # Dec 2
    hb("a2", 1, L(1, 12, 0, 10)), hb("a2", 2, L(1, 12, 7)),
    hb("a2", 3, L(1, 13, 0), kind="position"),  # not a heartbeat
    hb("a2", 4, L(1, 14, 0), cls="event"),      # not telemetry
    hb("stray-9", 1, L(1, 8, 0)),
]


async def test_box_online_rate_from_heartbeat_slots(db: Database, regions: Regions) -> None:
    await put(db, boxes, BOX_ROWS)
    await put(db, messages, HEARTBEATS)
    rep = await reports.box_report(db, regions, "day", DEC1, TZ, now_ms=L(2, 12))
    got = by_id(rep)
    day = 24 * 12
    assert (got["va1"]["boxes"], got["va1"]["slots_expected"], got["va1"]["slots_online"]) == (1, day, 3)
    assert got["va1"]["online_rate"] == round(3 / day, 4)
    assert (got["va2"]["slots_expected"], got["va2"]["slots_online"]) == (day // 2, 2)
    assert got["town-a"]["online_rate"] == round(5 / (day + day // 2), 4)
    assert (got["vb1"]["boxes"], got["vb1"]["slots_expected"], got["vb1"]["online_rate"]) == (1, day, 0.0)
    c = got["menghai"]
    assert (c["boxes"], c["slots_expected"], c["slots_online"]) == (4, day + day // 2 + day + day, 3 + 2 + 0 + 1)


async def test_box_rate_of_today_counts_up_to_now_and_uses_the_county_day(db: Database, regions: Regions) -> None:
    await put(db, boxes, BOX_ROWS)
    await put(db, messages, HEARTBEATS)
    got = by_id(await reports.box_report(db, regions, "day", DEC1, TZ, now_ms=L(1, 0, 10)))
    assert (got["va1"]["slots_expected"], got["va1"]["slots_online"], got["va1"]["online_rate"]) == (2, 2, 1.0)
    assert got["va2"]["boxes"] == 0 and got["va2"]["online_rate"] is None  # not there yet at 00:10
    utc = by_id(await reports.box_report(db, regions, "day", DEC1, "UTC", now_ms=L(3, 0)))
    # the UTC day is 08:00 Dec 1 -> 08:00 Dec 2 local: 23:59 Dec 1 and 00:01 Dec 2, not the night of Dec 1
    assert utc["va1"]["slots_online"] == 2


# ------------------------------------------------------------------------------------------ alarms
def alarm(aid: str, box: str, kind: str, ts: int, ack_s: float | None, resolve_s: float | None) -> dict[str, Any]:
    return {"id": aid, "box": box, "kind": kind, "ts": ts, "received": ts, "data": {},
            "state": "resolved" if resolve_s is not None else "acknowledged" if ack_s is not None else "new",
            "acked_at": None if ack_s is None else ts + int(ack_s * 1000),
            "resolved_at": None if resolve_s is None else ts + int(resolve_s * 1000)}


ALARM_ROWS = [
    alarm("a1:1", "a1", "sos", L(1, 9), 30, 600),
    alarm("a1:2", "a1", "sos", L(1, 10), 90, 1200),
    alarm("a1:3", "a1", "sos", L(1, 14), -5, None),     # the box's clock ahead: 0 s
    alarm("a2:1", "a2", "fall", L(1, 11), 60, None),
    alarm("a2:2", "a2", "sos", L(1, 0, 30), 10, 300),   # 16:30 UTC on Nov 30
    alarm("b1:1", "b1", "sos", L(1, 12), None, None),
    alarm("b1:0", "b1", "sos", L(30, 23, month=11), 5, 5),  # Nov 30
    alarm("stray-9:1", "stray-9", "sos", L(1, 13), 120, 2400),
]


async def test_alarm_response_times_median_p90_per_kind_and_township(db: Database, regions: Regions) -> None:
    await put(db, alarms, ALARM_ROWS)
    rep = await reports.alarm_report(db, regions, "day", DEC1, TZ)
    got = {(r["id"], r["kind"]): r for r in rep.rows}
    assert list(got) == [("menghai", "*"), ("menghai", "fall"), ("menghai", "sos"),
                         ("town-a", "*"), ("town-a", "fall"), ("town-a", "sos"), ("town-b", "*"), ("town-b", "sos")]
    sos = got[("town-a", "sos")]  # acks 0, 10, 30, 90; resolves 300, 600, 1200
    assert (sos["alarms"], sos["acknowledged"], sos["resolved"]) == (4, 4, 3)
    assert sos["ack_median_s"] == (10 + 30) / 2 and sos["ack_p90_s"] == 30 + 0.7 * (90 - 30)
    assert sos["resolve_median_s"] == 600 and sos["resolve_p90_s"] == 600 + 0.8 * (1200 - 600)
    fall = got[("town-a", "fall")]
    assert (fall["alarms"], fall["ack_median_s"], fall["ack_p90_s"], fall["resolve_median_s"]) == (1, 60, 60, None)
    every = got[("town-a", "*")]  # acks 0, 10, 30, 60, 90
    assert (every["alarms"], every["ack_median_s"], every["ack_p90_s"]) == (5, 30, 60 + 0.6 * 30)
    b = got[("town-b", "*")]
    assert (b["alarms"], b["acknowledged"], b["ack_median_s"]) == (1, 0, None)
    c = got[("menghai", "*")]  # acks 0, 10, 30, 60, 90, 120; resolves 300, 600, 1200, 2400
    assert (c["alarms"], c["ack_median_s"], c["ack_p90_s"]) == (7, (30 + 60) / 2, 90 + 0.5 * 30)
    assert (c["resolve_median_s"], c["resolve_p90_s"]) == ((600 + 1200) / 2, 1200 + 0.7 * 1200)
    utc = {(r["id"], r["kind"]): r for r in (await reports.alarm_report(db, regions, "day", DEC1, "UTC")).rows}
    assert utc[("town-a", "sos")]["alarms"] == 3  # a2:2 is on Nov 30 in UTC
    scoped = await reports.alarm_report(db, regions, "day", DEC1, TZ, scope="town-b")
    assert {r["id"] for r in scoped.rows} == {"town-b"}


def test_quantile_is_numpy_linear() -> None:
    assert reports.quantile([], 0.5) is None
    assert reports.quantile([7], 0.9) == 7
    assert reports.quantile([1, 2, 3, 4], 0.5) == 2.5
    assert reports.quantile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 0.9) == pytest.approx(91)


# ------------------------------------------------------------------------------------------ input
def test_dates_and_periods() -> None:
    now = L(1, 0, 30)  # 16:30 UTC on Nov 30: already Dec 1 in Shanghai
    assert reports.parse_date(None, "day", TZ, now) == DEC1
    assert reports.parse_date(None, "day", "UTC", now) == dt.date(2026, 11, 30)
    assert reports.parse_date("2026-12", "month", TZ, now) == DEC1
    for bad in ("2026-12", "2026-13-01", "yesterday", "2026-12-01T00:00", "２０２６-12-01"):
        with pytest.raises(reports.ReportError):
            reports.parse_date(bad, "day", TZ, now)
    with pytest.raises(reports.ReportError):
        reports.parse_date("2026-12-01", "week", TZ, now)
    dec = reports.bucket("month", dt.date(2026, 12, 31), TZ)
    assert dec.first == DEC1 and dec.end_ms - dec.start_ms == 31 * 86_400_000
    # a DST day in a zone that has one: 23 hours
    spring = reports.bucket("day", dt.date(2026, 3, 8), "America/New_York")
    assert spring.end_ms - spring.start_ms == 23 * 3_600_000


# ------------------------------------------------------------------------------------------ export
async def test_csv_and_xlsx_exports(db: Database) -> None:
    hostile = json.loads(json.dumps(REGIONS))
    hostile["township"][0]["village"][0]["name"] = "=HYPERLINK(\"http://x\")"
    regions = parse_regions(hostile)
    await put(db, camera_periods, CAMERA_ROWS)
    rep = await reports.camera_report(db, regions, "day", DEC1, TZ)

    raw = reports.to_csv(rep)
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw[3:].decode("utf-8"))))
    assert rows[0] == reports.CAMERA_COLUMNS
    body = {r[1]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert body["menghai"]["name"] == "勐海县"
    assert body["va1"]["name"] == "'=HYPERLINK(\"http://x\")"  # never a formula
    assert body["vb1"]["online_rate_pit"] == "" and body["vb1"]["online_rate_tw"] == "1.0"

    book = openpyxl.load_workbook(io.BytesIO(reports.to_xlsx(rep)))
    ws = book.active
    assert ws is not None and ws.title == "cameras 2026-12-01"
    cells = [[c.value for c in row] for row in ws.iter_rows()]
    assert cells[0] == reports.CAMERA_COLUMNS and len(cells) == 1 + len(rep.rows)
    x = {r[1]: dict(zip(cells[0], r, strict=True)) for r in cells[1:]}
    assert x["va1"]["online_rate_tw"] == round(1300 / 2400, 4) and x["va1"]["name"].startswith("'=")
    assert x["vb1"]["online_rate_pit"] is None and x["menghai"]["cameras"] == 5
    rate_col = reports.CAMERA_COLUMNS.index("online_rate_tw") + 1
    assert ws.cell(row=2, column=rate_col).number_format == "0.00%"
