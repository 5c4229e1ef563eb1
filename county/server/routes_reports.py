"""GET /api/v1/reports/{cameras,boxes,alarms}: the reports of county/reports.py as JSON, CSV or XLSX.

    GET /api/v1/reports/cameras?period=day|month&date=YYYY-MM-DD[&region=ID][&format=json|csv|xlsx]

`period` defaults to `day`, `date` to today in the county's timezone (`[county] timezone`); for a month
any day of it or `YYYY-MM`. `region` (a township or village id, or the county's) narrows the rows to that
subtree and must lie inside the user's scope (403 otherwise); without it the user's scope is used. Needs
`reports.read` (admin, operator, reviewer, viewer; not gridworker). JSON is
`{"report","period","date","timezone","from","to","columns","rows"}`; CSV (UTF-8 with BOM) and XLSX are
downloads (`Content-Disposition: attachment; filename="cameras-day-2026-12-01.csv"`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from county import reports
from county.server.routes_common import ApiError, api, authorize, parts

FORMATS = {"json": "application/json",
           "csv": "text/csv; charset=utf-8",
           "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}

Maker = Callable[[Any, Any, str, Any, str, int, "str | None"], Awaitable[reports.Report]]


async def _cameras(db: Any, regions: Any, period: str, day: Any, tz: str, now: int,
                   scope: str | None) -> reports.Report:
    return await reports.camera_report(db, regions, period, day, tz, scope)


async def _boxes(db: Any, regions: Any, period: str, day: Any, tz: str, now: int,
                 scope: str | None) -> reports.Report:
    return await reports.box_report(db, regions, period, day, tz, now, scope)


async def _alarms(db: Any, regions: Any, period: str, day: Any, tz: str, now: int,
                  scope: str | None) -> reports.Report:
    return await reports.alarm_report(db, regions, period, day, tz, scope)


def _endpoint(make: Maker) -> Callable[[Request], Awaitable[Response]]:
    @api
    async def endpoint(request: Request) -> Response:
        q = request.query_params
        fmt = q.get("format") or "json"
        if fmt not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(FORMATS)}")
        period = q.get("period") or "day"
        region = q.get("region") or None
        p = parts(request)
        if region is not None and (p.regions is None or not p.regions.has_scope(region)):
            raise ApiError(400, "region must be the county's, a township's or a village's id from the regions file")
        user = authorize(request, "reports.read", region)
        tz = p.config.county.timezone
        now = p.now_ms()
        try:
            day = reports.parse_date(q.get("date"), period, tz, now)
            report = await make(p.db, p.regions, period, day, tz, now, region or user.scope)
        except reports.ReportError as exc:
            raise ApiError(400, str(exc)) from None
        if fmt == "json":
            return JSONResponse(report.to_json())
        body = reports.to_csv(report) if fmt == "csv" else reports.to_xlsx(report)
        return Response(body, media_type=FORMATS[fmt],
                        headers={"Content-Disposition": f'attachment; filename="{report.filename}.{fmt}"'})

    return endpoint


def routes() -> list[Route]:
    return [
        Route("/api/v1/reports/cameras", _endpoint(_cameras), methods=["GET"]),
        Route("/api/v1/reports/boxes", _endpoint(_boxes), methods=["GET"]),
        Route("/api/v1/reports/alarms", _endpoint(_alarms), methods=["GET"]),
    ]
