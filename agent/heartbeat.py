"""Heartbeat telemetry (contract section 4): uptime, outbox depth per class and oldest ts, disk free; and
(issue 14) `usage`: the link's bytes sent and received this UTC day and month, the budget, thinning."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.clock import Clock
from agent.clocksanity import check_now
from agent.outbox import Outbox, OutboxRefused
from agent.protocol.envelope import MsgClass
from agent.uplink_usage import usage_beside

log = logging.getLogger("agent.heartbeat")


class Heartbeat:
    name = "heartbeat"

    def __init__(self, outbox: Outbox, clock: Clock, *, interval_s: float, extra: Callable[[], dict[str, Any]]
                 | None = None) -> None:
        self.outbox = outbox
        self.clock = clock
        self.interval_s = interval_s
        self.extra = extra
        self._started = clock.monotonic()

    async def snapshot(self) -> dict[str, Any]:
        stats = await self.outbox.stats()
        try:
            free_mb = shutil.disk_usage(self.outbox.path.parent).free // (1024 * 1024)
        except OSError:
            free_mb = None
        data: dict[str, Any] = {
            "uptime_s": int(self.clock.monotonic() - self._started),
            "outbox": {
                "depth": stats.depth,
                "oldest_ts": stats.oldest_ts,
                "bytes": stats.bytes,
                "counters": stats.counters,
            },
            "disk_free_mb": free_mb,
            "version": __version__,
            "clock": self._clock_report(),
        }
        if self.extra is not None:
            data.update(self.extra())
        usage = usage_beside(self.outbox.path)
        if usage is not None:  # the link's 4G bytes this day and month, and the budget (issue 14)
            data["usage"] = usage.report()
        return data

    def _clock_report(self) -> dict[str, Any]:
        verdict = check_now(self.clock.time())
        return {"plausible": verdict.plausible, "synchronised": verdict.synchronised,
                "offset_s": verdict.offset_s, "reason": verdict.reason}

    async def run(self, ready: Callable[[], None]) -> None:
        await self.outbox.wait_open()
        ready()
        verdict = check_now(self.clock.time())
        if not verdict.plausible or verdict.synchronised is False:
            log.warning("heartbeat: wall clock not trustworthy: %s", verdict.reason)
        while True:
            try:
                await self.outbox.send(MsgClass.TELEMETRY, "heartbeat", await self.snapshot())
            except OutboxRefused as exc:
                log.warning("heartbeat: not stored: %s", exc)
            await asyncio.sleep(self.interval_s)
