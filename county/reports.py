"""County reports: camera online rates, box online rates, alarm response times; CSV and XLSX export.

Every report covers one *bucket* of the county's own calendar (`[county] timezone`, Asia/Shanghai by
default): a day (00:00 to 00:00 local time) or a month (the 1st 00:00 to the next 1st 00:00), and has
one row per region the reader may see: the county, each township, each village (regions file order).
A box the regions file does not name ("unregistered") counts in the county's row only.
The definitions (docs/county-server.md, "Reports"):

Cameras, from `camera_periods` (one row per camera per `cameras` telemetry period, docs/cameras.md):
- time-weighted: `online_s / (online_s + degraded_s + offline_s)`. The seconds of a period are split
  over the buckets it overlaps in proportion to the overlap (a period 23:50-00:05 gives 2/3 of its
  seconds to the first day). `unknown` (the box was not watching: agent down, the box's LAN down) and
  `maintenance` (taken out on purpose) are left out of the rate and shown as their own columns;
  `degraded` (video there but bad: black, frozen, auth_failed...) counts as not online.
  `coverage` = known seconds / all seconds reported.
- point-in-time: the share of samples that were `online` among the samples in a known state
  (online, degraded, offline). The samples are the ends of the telemetry periods (`period_to`,
  every `telemetry_s`, 15 min by default, per camera) that fall in the bucket, each with the camera's
  state at that moment (`camera_periods.state`). With the boxes' regular periods this is the mean of
  "cameras online / cameras known" over the sample times.

Boxes, from the heartbeat envelopes in `messages` (there is no box state history): a box is online in a
5-minute slot (aligned to epoch, so to every local day) when a heartbeat *arrived* (`received`, the
county's clock) in it. Rate = online slots / expected slots, expected = the slots of the bucket from the
box's `first_seen` (a registered box that never reported: from the bucket's start) up to now. Heartbeats
are telemetry: retention (90 days by default) deletes them, so older buckets have no box figures.

Alarms, from `alarms` whose `ts` (when it happened) is in the bucket: time to acknowledge
`acked_at - ts` and time to resolve `resolved_at - ts` in seconds (a negative value from a box clock
ahead of the county's is counted as 0), median and 90th percentile (linear interpolation between the
closest ranks, as numpy's default), per kind and per township (and the county), with the count of
alarms, acknowledged and resolved.

SQL here is SQLAlchemy Core over `county.store.tables`, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import distinct, func, select

from county.regions import Regions
from county.store.db import Database
from county.store.tables import alarms, boxes, camera_periods, messages

PERIODS = ("day", "month")
SLOT_MS = 300_000  # the box online rate's 5-minute slot
KNOWN = ("online", "degraded", "offline")
CAMERA_STATES = ("online", "degraded", "offline", "unknown", "maintenance")
MAX_PERIOD_MS = 86_400_000  # a telemetry period longer than a day is not looked for across a boundary
UNREGISTERED = "unregistered"


class ReportError(ValueError):
    """A report asked with a bad period or date; `str()` says which."""


# ------------------------------------------------------------------------------------------ buckets
@dataclass(frozen=True, slots=True)
class Bucket:
    period: str  # day | month
    first: dt.date  # the day, or the month's 1st
    timezone: str
    start_ms: int
    end_ms: int  # exclusive

    @property
    def label(self) -> str:
        return self.first.isoformat() if self.period == "day" else self.first.strftime("%Y-%m")


def parse_date(text: str | None, period: str, timezone: str, now_ms: int) -> dt.date:
    """YYYY-MM-DD (any day of the month for a month report) or, for a month, YYYY-MM; None: today's."""
    if period not in PERIODS:
        raise ReportError(f"period must be one of {', '.join(PERIODS)}")
    if text is None or text == "":
        return dt.datetime.fromtimestamp(now_ms / 1000, zoneinfo.ZoneInfo(timezone)).date()
    try:
        if period == "month" and len(text) == 7:
            return dt.date.fromisoformat(text + "-01")
        if len(text) != 10:
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReportError("date must be YYYY-MM-DD" + (" or YYYY-MM" if period == "month" else "")) from None


def bucket(period: str, day: dt.date, timezone: str) -> Bucket:
    """The bucket holding `day`: that day, or its month, in the county's timezone (DST-safe)."""
    if period not in PERIODS:
        raise ReportError(f"period must be one of {', '.join(PERIODS)}")
    tz = zoneinfo.ZoneInfo(timezone)
    if period == "day":
        first, nxt = day, day + dt.timedelta(days=1)
    else:
        first = day.replace(day=1)
        nxt = (first.replace(year=first.year + 1, month=1) if first.month == 12
               else first.replace(month=first.month + 1))

    def ms(d: dt.date) -> int:
        return int(dt.datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)

    return Bucket(period, first, timezone, ms(first), ms(nxt))


# ------------------------------------------------------------------------------------------ reports
@dataclass
class Report:
    """A table: `columns` (keys of every row, in order), `rows`, and what it covers."""

    kind: str  # cameras | boxes | alarms
    bucket: Bucket
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        b = self.bucket
        return {"report": self.kind, "period": b.period, "date": b.label, "timezone": b.timezone,
                "from": b.start_ms, "to": b.end_ms, "columns": self.columns, "rows": self.rows}

    @property
    def filename(self) -> str:
        return f"{self.kind}-{self.bucket.period}-{self.bucket.label}"


@dataclass(frozen=True, slots=True)
class RegionRow:
    level: str  # county | township | village
    id: str
    name: str
    township: str | None


def region_rows(regions: Regions, scope: str | None) -> list[RegionRow]:
    """The county, then each township followed by its villages, limited to what `scope` may see."""
    out: list[RegionRow] = []
    if regions.region_within(regions.county_id, scope):
        out.append(RegionRow("county", regions.county_id, regions.county_name, None))
    if regions.data is not None:
        for t in regions.data.townships:
            if regions.region_within(t.id, scope):
                out.append(RegionRow("township", t.id, t.name, t.id))
            for v in t.villages:
                if regions.region_within(v.id, scope):
                    out.append(RegionRow("village", v.id, v.name, t.id))
    return out


def _regions_of(regions: Regions, box: str) -> tuple[str, ...]:
    """The region ids a box's figures add to: the county, and its township and village when registered."""
    p = regions.place(box)
    if not p.registered:
        return (regions.county_id,)
    assert p.township is not None and p.village is not None
    return (regions.county_id, p.township, p.village)


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def _head(r: RegionRow) -> dict[str, Any]:
    return {"level": r.level, "id": r.id, "name": r.name, "township": r.township}


HEAD = ["level", "id", "name", "township"]
CAMERA_COLUMNS = [*HEAD, "cameras", "samples", "samples_online", "online_rate_pit", "online_s", "degraded_s",
                  "offline_s", "unknown_s", "maintenance_s", "coverage", "online_rate_tw"]
BOX_COLUMNS = [*HEAD, "boxes", "slots_expected", "slots_online", "online_rate"]
ALARM_COLUMNS = ["level", "id", "name", "kind", "alarms", "acknowledged", "resolved", "ack_median_s", "ack_p90_s",
                 "resolve_median_s", "resolve_p90_s"]


async def camera_report(db: Database, regions: Regions, period: str, day: dt.date, timezone: str,
                        scope: str | None = None) -> Report:
    """Camera online rates, point-in-time and time-weighted, per region (see the module doc)."""
    b = bucket(period, day, timezone)
    p = camera_periods.c
    pit_q = (select(p.box, p.camera, p.state, func.count())
             .where(p.period_to >= b.start_ms, p.period_to < b.end_ms)
             .group_by(p.box, p.camera, p.state))
    tw_q = (select(p.box, p.camera, p.period_from, p.period_to, p.seconds)
            .where(p.period_from >= b.start_ms - MAX_PERIOD_MS, p.period_from < b.end_ms, p.period_to > b.start_ms))
    cams: dict[str, set[tuple[str, str]]] = defaultdict(set)
    samples: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CAMERA_STATES, 0))
    secs: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(CAMERA_STATES, 0.0))
    async with db.connect() as conn:
        for box, cam, state, n in (await conn.execute(pit_q)).all():
            for rid in _regions_of(regions, box):
                cams[rid].add((box, cam))
                if state in samples[rid]:
                    samples[rid][state] += int(n)
        result = await conn.stream(tw_q)
        async for box, cam, p_from, p_to, seconds in result:
            if not isinstance(seconds, dict):
                continue
            span = p_to - p_from
            share = 1.0 if span <= 0 else (min(p_to, b.end_ms) - max(p_from, b.start_ms)) / span
            if share <= 0:
                continue
            targets = _regions_of(regions, box)
            for rid in targets:
                cams[rid].add((box, cam))
            for state, value in seconds.items():
                if state in CAMERA_STATES and isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                    for rid in targets:
                        secs[rid][state] += value * share
    report = Report("cameras", b, CAMERA_COLUMNS)
    for r in region_rows(regions, scope):
        s, t = samples[r.id], secs[r.id]
        known_n = sum(s[k] for k in KNOWN)
        known_s = sum(t[k] for k in KNOWN)
        total_s = sum(t.values())
        report.rows.append(_head(r) | {
            "cameras": len(cams[r.id]), "samples": known_n, "samples_online": s["online"],
            "online_rate_pit": _rate(s["online"], known_n),
            **{f"{k}_s": round(t[k], 1) for k in CAMERA_STATES},
            "coverage": _rate(known_s, total_s), "online_rate_tw": _rate(t["online"], known_s)})
    return report


async def box_report(db: Database, regions: Regions, period: str, day: dt.date, timezone: str, now_ms: int,
                     scope: str | None = None) -> Report:
    """Box online rates from heartbeat arrivals in 5-minute slots, per region (see the module doc)."""
    b = bucket(period, day, timezone)
    end = min(b.end_ms, -(-now_ms // SLOT_MS) * SLOT_MS)  # up to the slot holding now
    m = messages.c
    slot = m.received // SLOT_MS
    online_q = (select(m.box, func.count(distinct(slot)))
                .where(m["class"] == "telemetry", m.received >= b.start_ms, m.received < end,
                       m.kind == "heartbeat")
                .group_by(m.box))
    async with db.connect() as conn:
        online = {box: int(n) for box, n in (await conn.execute(online_q)).all()}
        first_seen = {box: fs for box, fs in (await conn.execute(select(boxes.c.id, boxes.c.first_seen))).all()}
    counted: dict[str, int] = defaultdict(int)
    expected: dict[str, int] = defaultdict(int)
    slots_on: dict[str, int] = defaultdict(int)
    for box in sorted(set(first_seen) | set(regions.registered())):
        fs = first_seen.get(box)
        start = b.start_ms if fs is None else max(b.start_ms, fs // SLOT_MS * SLOT_MS)
        n_expected = max(0, (end - start) // SLOT_MS)
        if n_expected == 0 and box not in online:
            continue  # not there yet in this bucket
        n_online = min(online.get(box, 0), n_expected)
        for rid in _regions_of(regions, box):
            counted[rid] += 1
            expected[rid] += n_expected
            slots_on[rid] += n_online
    report = Report("boxes", b, BOX_COLUMNS)
    for r in region_rows(regions, scope):
        report.rows.append(_head(r) | {"boxes": counted[r.id], "slots_expected": expected[r.id],
                                       "slots_online": slots_on[r.id],
                                       "online_rate": _rate(slots_on[r.id], expected[r.id])})
    return report


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _secs(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


async def alarm_report(db: Database, regions: Regions, period: str, day: dt.date, timezone: str,
                       scope: str | None = None) -> Report:
    """Alarm response times (ack, resolve) per township and kind; kind `*` is every kind together."""
    b = bucket(period, day, timezone)
    a = alarms.c
    q = (select(a.box, a.kind, a.ts, a.acked_at, a.resolved_at)
         .where(a.ts >= b.start_ms, a.ts < b.end_ms).order_by(a.ts))
    # (region id, kind) -> [count, ack seconds, resolve seconds]
    groups: dict[tuple[str, str], tuple[list[int], list[float], list[float]]] = defaultdict(lambda: ([0], [], []))
    kinds: set[str] = set()
    async with db.connect() as conn:
        for box, kind, ts, acked_at, resolved_at in (await conn.execute(q)).all():
            kinds.add(kind)
            for rid in _regions_of(regions, box)[:2]:  # the county and the township
                for k in (kind, "*"):
                    g = groups[(rid, k)]
                    g[0][0] += 1
                    if acked_at is not None:
                        g[1].append(max(0, acked_at - ts) / 1000)
                    if resolved_at is not None:
                        g[2].append(max(0, resolved_at - ts) / 1000)
    report = Report("alarms", b, ALARM_COLUMNS)
    for r in region_rows(regions, scope):
        if r.level == "village":
            continue
        for k in ["*", *sorted(kinds)]:
            if k != "*" and (r.id, k) not in groups:
                continue
            n, acks, resolves = groups[(r.id, k)] if (r.id, k) in groups else ([0], [], [])
            report.rows.append({"level": r.level, "id": r.id, "name": r.name, "kind": k, "alarms": n[0],
                                "acknowledged": len(acks), "resolved": len(resolves),
                                "ack_median_s": _secs(quantile(acks, 0.5)), "ack_p90_s": _secs(quantile(acks, 0.9)),
                                "resolve_median_s": _secs(quantile(resolves, 0.5)),
                                "resolve_p90_s": _secs(quantile(resolves, 0.9))})
    return report


# ------------------------------------------------------------------------------------------ export
def _cells(report: Report) -> Iterable[list[Any]]:
    yield list(report.columns)
    for row in report.rows:
        yield [row.get(c) for c in report.columns]


def _safe_text(v: Any) -> Any:
    """A cell that a spreadsheet would run as a formula (=, +, -, @ first) is written with a leading '."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def to_csv(report: Report) -> bytes:
    """UTF-8 with a byte order mark (so Excel reads the Chinese names), CRLF line ends, empty = no figure."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    for cells in _cells(report):
        w.writerow(["" if v is None else _safe_text(v) for v in cells])
    return b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")


def to_xlsx(report: Report) -> bytes:
    """One sheet named after the report, the header row bold and frozen; rates as numbers (0..1)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = f"{report.kind} {report.bucket.label}"
    for i, cells in enumerate(_cells(report)):
        ws.append([_safe_text(v) for v in cells])
        if i == 0:
            for c in ws[1]:
                c.font = Font(bold=True)
    ws.freeze_panes = "A2"
    for col, name in enumerate(report.columns, start=1):
        if "rate" in name or name == "coverage":
            for (cell,) in ws.iter_rows(min_row=2, min_col=col, max_col=col):
                cell.number_format = "0.00%"
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
