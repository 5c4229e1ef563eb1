"""Escalation: an alarm still unacknowledged `[alarms] escalate_after_s` after it reached the county is
POSTed as JSON to `[alarms] webhook` (an SMS / WeChat / phone gateway plugs in there), with retries.

    task = start_escalation(db, config, regions=regions, hub=hub)   # None when no webhook is configured
    ...
    task.cancel()                                                     # at shutdown

Every `tick_s` the escalator looks for alarms in state `new` whose `received` (or last escalation) is
`escalate_after_s` old. Each one is first *claimed* with a conditional UPDATE of `escalated_at` (the value
it had is part of the WHERE), so with several server instances exactly one of them escalates it; then the
webhook gets up to 1 + `webhook_retries` tries, waiting `backoff_s`, 2x, 4x ... (at most `backoff_max_s`)
between them; a 2xx answer is delivered. A delivered escalation adds one to `escalations` and an audit row
(`alarm.escalate`, actor `escalation`). An alarm still unacknowledged another `escalate_after_s` later is
escalated again (`escalations` 2, 3, ...); one acknowledged meanwhile is not tried further. A webhook that
never answered is tried again at the next round. The webhook's URL may hold a token: logs show its host only.

The request body:
    {"event": "alarm.unacknowledged", "alarm": {...as GET /api/v1/alarms...}, "unacknowledged_s": 312,
     "escalation": 1, "sent_at": 1763900312000}
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import or_, select, update

from county.server import audit
from county.server.routes_alarms import alarm_json
from county.store.tables import alarms as alarms_t

log = logging.getLogger("county.escalation")

ACTOR = "escalation"
BATCH = 50
DEFAULT_TICK_S = 5.0


class Escalator:
    def __init__(self, db: Any, *, webhook: str, after_s: float, timeout_s: float = 10.0, retries: int = 5,
                 regions: Any = None, hub: Any = None, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.webhook = webhook
        self.host = urlsplit(webhook).hostname or "?"
        self.after_ms = int(after_s * 1000)
        self.timeout_s = timeout_s
        self.retries = retries
        self.regions = regions
        self.hub = hub
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.delivered = 0
        self.failed = 0

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def due(self) -> list[Any]:
        cutoff = self._now_ms() - self.after_ms
        stmt = (select(alarms_t).where(
            alarms_t.c.state == "new",
            or_(alarms_t.c.escalated_at.is_(None) & (alarms_t.c.received <= cutoff),
                alarms_t.c.escalated_at <= cutoff))
            .order_by(alarms_t.c.received).limit(BATCH))
        async with self.db.connect() as conn:
            return list((await conn.execute(stmt)).mappings().all())

    async def _claim(self, row: Any, now: int) -> bool:
        old = row["escalated_at"]
        cond = alarms_t.c.escalated_at.is_(None) if old is None else alarms_t.c.escalated_at == old
        async with self.db.begin() as conn:
            result = await conn.execute(update(alarms_t).where(alarms_t.c.id == row["id"], alarms_t.c.state == "new",
                                                               cond).values(escalated_at=now))
        return bool(result.rowcount == 1)

    async def _still_new(self, alarm_id: str) -> bool:
        async with self.db.connect() as conn:
            state = (await conn.execute(select(alarms_t.c.state).where(alarms_t.c.id == alarm_id))).scalar()
        return state == "new"

    async def _deliver(self, client: httpx.AsyncClient, row: Any, now: int) -> bool:
        body = {"event": "alarm.unacknowledged", "alarm": alarm_json(row, self.regions),
                "unacknowledged_s": max(0, (now - int(row["received"])) // 1000),
                "escalation": int(row["escalations"] or 0) + 1, "sent_at": now}
        wait = self.backoff_s
        for attempt in range(1, self.retries + 2):
            try:
                resp = await client.post(self.webhook, json=body, timeout=self.timeout_s)
                if 200 <= resp.status_code < 300:
                    return await self._record(row, attempt, resp.status_code)
                why = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            log.warning("escalation of alarm %s to webhook at %s: try %d failed (%s)", row["id"], self.host,
                        attempt, why)
            if attempt > self.retries:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.backoff_max_s)
            if not await self._still_new(row["id"]):
                return False  # acknowledged meanwhile: nobody needs waking
        self.failed += 1
        log.error("escalation of alarm %s to webhook at %s failed after %d tries; tried again in %d s", row["id"],
                  self.host, self.retries + 1, self.after_ms // 1000)
        return False

    async def _record(self, row: Any, attempts: int, status: int) -> bool:
        async with self.db.begin() as conn:
            await conn.execute(update(alarms_t).where(alarms_t.c.id == row["id"])
                               .values(escalations=alarms_t.c.escalations + 1))
            await audit.append(conn, ACTOR, "alarm.escalate", row["id"],
                               {"attempts": attempts, "status": status, "box": row["box"], "kind": row["kind"]})
            after = (await conn.execute(select(alarms_t).where(alarms_t.c.id == row["id"]))).mappings().first()
        self.delivered += 1
        if self.hub is not None and after is not None:
            self.hub.publish("alarm", alarm_json(after, self.regions))
        return True

    async def run_once(self) -> int:
        """One round: claim and escalate every due alarm; returns how many were delivered."""
        rows = await self.due()
        if not rows:
            return 0
        now = self._now_ms()
        claimed = [r for r in rows if await self._claim(r, now)]
        async with httpx.AsyncClient() as client:
            results = await asyncio.gather(*(self._deliver(client, r, now) for r in claimed))
        return sum(1 for ok in results if ok)

    async def run(self, tick_s: float = DEFAULT_TICK_S) -> None:
        """Rounds forever, `tick_s` apart (cancel the task to stop); a round that fails is logged, not fatal."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("escalation round failed; trying again in %.0f s", tick_s)
            await asyncio.sleep(tick_s)


def start_escalation(db: Any, config: Any, *, regions: Any = None, hub: Any = None, tick_s: float | None = None,
                     backoff_s: float = 1.0) -> asyncio.Task[None] | None:
    """The escalation task for `config.alarms` (None when no webhook is configured)."""
    alarms = config.alarms
    if not alarms.webhook:
        return None
    esc = Escalator(db, webhook=alarms.webhook, after_s=alarms.escalate_after_s, timeout_s=alarms.webhook_timeout_s,
                    retries=alarms.webhook_retries, regions=regions, hub=hub, backoff_s=backoff_s)
    tick = tick_s if tick_s is not None else max(0.5, min(DEFAULT_TICK_S, alarms.escalate_after_s / 4))
    return asyncio.create_task(esc.run(tick), name="county-escalation")
