"""The camera online-rate report as a county assessment sheet (摄像头在线率考核表), XLSX or CSV.

Laid out the way county offices hand these in: a title row (county, period), a subtitle (timezone, when
made, the two definitions), then one block per township: its villages, then the township's subtotal row
(bold), and the county's total row last. Columns: 序号 (a running number over the villages), 乡镇, 村,
摄像头数, 时点在线率, 时长加权在线率, 覆盖率, 在线/降级/离线/未知 hours. Rates are numbers (0..1) with a
percent format, so the sheet can be summed and sorted; an empty cell is "no figure" (no camera reported).
Headings come from the console's catalog (zh_CN by default, en on request).

The figures are county/reports.py camera_report's, unchanged: the definitions are in its docstring.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import zoneinfo
from typing import Any

from county import reports
from county.web import i18n
from county.web.pages import N_

COLUMNS: tuple[tuple[str, str], ...] = (
    ("no", N_("No.")),
    ("township", N_("Township")),
    ("village", N_("Village")),
    ("cameras", N_("Number of cameras")),
    ("online_rate_pit", N_("Online rate (point in time)")),
    ("online_rate_tw", N_("Online rate (time-weighted)")),
    ("coverage", N_("Coverage")),
    ("online_h", N_("Online hours")),
    ("degraded_h", N_("Degraded hours")),
    ("offline_h", N_("Offline hours")),
    ("unknown_h", N_("Unknown hours")),
)
RATES = ("online_rate_pit", "online_rate_tw", "coverage")
TITLE = N_("%(county)s camera online rate assessment, %(period)s")
SUBTITLE = N_("Time zone %(tz)s; made %(made)s. Point in time: share of samples online; "
              "time-weighted: online seconds over known seconds.")
SUBTOTAL = N_("%(township)s subtotal")
TOTAL = N_("County total")
DAY = N_("%(year)s-%(month)s-%(day)s")
MONTH = N_("%(year)s-%(month)s")


def _hours(seconds: Any) -> float | None:
    return round(seconds / 3600, 2) if isinstance(seconds, (int, float)) else None


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    return {"cameras": row.get("cameras"), "online_rate_pit": row.get("online_rate_pit"),
            "online_rate_tw": row.get("online_rate_tw"), "coverage": row.get("coverage"),
            "online_h": _hours(row.get("online_s")), "degraded_h": _hours(row.get("degraded_s")),
            "offline_h": _hours(row.get("offline_s")), "unknown_h": _hours(row.get("unknown_s"))}


def sheet_rows(report: reports.Report, locale: str) -> list[tuple[str, dict[str, Any]]]:
    """("village" | "subtotal" | "total", cells) in sheet order (see the module doc)."""
    tr = i18n.catalog(locale).gettext
    by_id = {r["id"]: r for r in report.rows}
    townships = [r for r in report.rows if r["level"] == "township"]
    out: list[tuple[str, dict[str, Any]]] = []
    n = 0
    seen_townships = set()
    for t in townships:
        seen_townships.add(t["id"])
        for v in (r for r in report.rows if r["level"] == "village" and r["township"] == t["id"]):
            n += 1
            out.append(("village", {"no": n, "township": t["name"], "village": v["name"]} | _figures(v)))
        out.append(("subtotal", {"no": None, "township": tr(SUBTOTAL) % {"township": t["name"]}, "village": None}
                    | _figures(t)))
    # villages of a scoped view whose township row is outside the scope (a village user): no subtotal
    for v in (r for r in report.rows if r["level"] == "village" and r["township"] not in seen_townships):
        n += 1
        town = by_id.get(v["township"], {}).get("name") if v["township"] else None
        out.append(("village", {"no": n, "township": town, "village": v["name"]} | _figures(v)))
    for c in (r for r in report.rows if r["level"] == "county"):
        out.append(("total", {"no": None, "township": tr(TOTAL), "village": None} | _figures(c)))
    return out


def titles(report: reports.Report, county_name: str, locale: str, now_ms: int) -> tuple[str, str]:
    tr = i18n.catalog(locale).gettext
    b = report.bucket
    ymd = {"year": b.first.year, "month": f"{b.first.month:02d}", "day": f"{b.first.day:02d}"}
    period = tr(DAY) % ymd if b.period == "day" else tr(MONTH) % ymd
    made = dt.datetime.fromtimestamp(now_ms / 1000, tz=zoneinfo.ZoneInfo(b.timezone)).strftime("%Y-%m-%d %H:%M")
    return (tr(TITLE) % {"county": county_name, "period": period},
            tr(SUBTITLE) % {"tz": b.timezone, "made": made})


def to_xlsx(report: reports.Report, county_name: str, locale: str, now_ms: int) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
    from openpyxl.utils import get_column_letter

    tr = i18n.catalog(locale).gettext
    title, subtitle = titles(report, county_name, locale, now_ms)
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = report.bucket.label
    width = len(COLUMNS)
    ws.append([title])
    ws.merge_cells(start_row=1, start_column=1, end_row=1, end_column=width)
    ws["A1"].font = Font(bold=True, size=14)
    ws["A1"].alignment = Alignment(horizontal="center")
    ws.append([subtitle])
    ws.merge_cells(start_row=2, start_column=1, end_row=2, end_column=width)
    ws["A2"].font = Font(size=9, italic=True)
    ws.append([tr(label) for _key, label in COLUMNS])
    thin = Side(style="thin", color="999999")
    box = Border(left=thin, right=thin, top=thin, bottom=thin)
    head_fill = PatternFill("solid", fgColor="DDE4EE")
    for cell in ws[3]:
        cell.font = Font(bold=True)
        cell.fill = head_fill
        cell.border = box
        cell.alignment = Alignment(horizontal="center", vertical="center", wrap_text=True)
    sub_fill = PatternFill("solid", fgColor="F1F4F8")
    for kind, cells in sheet_rows(report, locale):
        ws.append([reports._safe_text(cells.get(key)) for key, _label in COLUMNS])
        row = ws[ws.max_row]
        for (key, _label), cell in zip(COLUMNS, row, strict=True):
            cell.border = box
            if key in RATES:
                cell.number_format = "0.00%"
            elif key.endswith("_h"):
                cell.number_format = "0.00"
            if kind != "village":
                cell.font = Font(bold=True)
                cell.fill = sub_fill
    for i, (key, _label) in enumerate(COLUMNS, start=1):
        ws.column_dimensions[get_column_letter(i)].width = {"no": 6, "township": 16, "village": 16}.get(key, 14)
    ws.freeze_panes = "A4"
    ws.print_title_rows = "3:3"
    ws.page_setup.orientation = "landscape"
    ws.page_setup.fitToWidth = 1
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def to_csv(report: reports.Report, county_name: str, locale: str, now_ms: int) -> bytes:
    """The same rows as CSV (UTF-8 with BOM, CRLF): the title and subtitle lines, the header, the rows;
    rates as numbers 0..1 like the XLSX."""
    tr = i18n.catalog(locale).gettext
    title, subtitle = titles(report, county_name, locale, now_ms)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([title])
    w.writerow([subtitle])
    w.writerow([tr(label) for _key, label in COLUMNS])
    for _kind, cells in sheet_rows(report, locale):
        w.writerow(["" if cells.get(k) is None else reports._safe_text(cells.get(k)) for k, _label in COLUMNS])
    return b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")
