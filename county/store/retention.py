"""Retention: old telemetry goes, in batches; everything an operator may have to answer for stays.

Deleted (by the county's own clock, `received`, so a box with a wrong clock cannot keep or lose rows):
- `messages` of class `telemetry` received more than `telemetry_days` ago (heartbeats, positions,
  camera periods as envelopes: the bulk of the table);
- `positions` (the history) older than `telemetry_days` by their `ts`;
- `quarantine` rows received more than `quarantine_days` ago.
Kept for ever: `messages` of class `alarm`, `event` and `receipt` (the record of what happened, small),
`alarms`, `receipts`, `broadcasts`, `fences`/`fence_pushes`, `audit` (its hash chain must stay whole),
`positions_latest`, `camera_states` and `camera_periods` (the monthly camera reports read them; one row
per camera per period), `boxes`, `users`. Expired `sessions` are the auth module's business.

Each batch of at most `batch_rows` rows is its own transaction, so ingest (one writer on SQLite) waits at
most one batch, and a stopped purge keeps what it did. Every deleted envelope is counted on its box
(`boxes.purged`), so the seq gaps retention leaves are not reported as missing envelopes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Table, delete, select, update

from county.store.db import Database
from county.store.tables import boxes, messages, positions, quarantine
from drivers.aio import wait_within

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
PURGED_CLASSES = ("telemetry",)


@dataclass(frozen=True, slots=True)
class Purged:
    """What one `purge` deleted: rows per table and the size of every batch (each one transaction)."""

    messages: int = 0
    positions: int = 0
    quarantine: int = 0
    batches: tuple[int, ...] = field(default=())

    @property
    def total(self) -> int:
        return self.messages + self.positions + self.quarantine


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def purge(db: Database, *, now_ms: int | None = None, telemetry_days: float = 90.0,
                quarantine_days: float = 90.0, batch_rows: int = 5000) -> Purged:
    """Delete what retention says (module doc), `batch_rows` rows per transaction; returns the counts."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
    if telemetry_days <= 0 or quarantine_days <= 0:
        raise ValueError("retention days must be positive")
    now = _now_ms() if now_ms is None else now_ms
    telemetry_before = now - int(telemetry_days * DAY_MS)
    quarantine_before = now - int(quarantine_days * DAY_MS)
    batches: list[int] = []

    n_messages = 0
    while True:
        async with db.begin() as conn:
            ids = (select(messages.c.id)
                   .where(messages.c["class"].in_(PURGED_CLASSES), messages.c.received < telemetry_before)
                   .limit(batch_rows))
            gone = (await conn.execute(delete(messages).where(messages.c.id.in_(ids.scalar_subquery()))
                                       .returning(messages.c.box))).scalars().all()
            for box, n in Counter(gone).items():
                await conn.execute(update(boxes).where(boxes.c.id == box).values(purged=boxes.c.purged + n))
        n_messages += len(gone)
        if gone:
            batches.append(len(gone))
        if len(gone) < batch_rows:
            break
        await asyncio.sleep(0)  # let ingest and the API in between batches

    n_positions = await _purge_by_id(db, positions, positions.c.ts < telemetry_before, batch_rows, batches)
    n_quarantine = await _purge_by_id(db, quarantine, quarantine.c.received < quarantine_before, batch_rows,
                                      batches)
    result = Purged(n_messages, n_positions, n_quarantine, tuple(batches))
    if result.total:
        log.info("retention deleted %d telemetry messages, %d positions, %d quarantined payloads in %d batches",
                 result.messages, result.positions, result.quarantine, len(result.batches))
    return result


async def _purge_by_id(db: Database, t: Table, older: ColumnElement[bool], batch_rows: int,
                      batches: list[int]) -> int:
    total = 0
    while True:
        async with db.begin() as conn:
            ids = select(t.c.id).where(older).limit(batch_rows)
            n = len((await conn.execute(delete(t).where(t.c.id.in_(ids.scalar_subquery()))
                                        .returning(t.c.id))).all())
        total += n
        if n:
            batches.append(n)
        if n < batch_rows:
            return total
        await asyncio.sleep(0)


async def run(db: Database, stop: asyncio.Event, *, every_s: float = 3600.0,
              now_ms: Callable[[], int] = _now_ms, telemetry_days: float = 90.0, quarantine_days: float = 90.0,
              batch_rows: int = 5000, on_pass: Callable[[Purged], None] | None = None) -> None:
    """Purge at once and then every `every_s` seconds until `stop` is set (the server runs this task).

    A failed pass (the database away for a moment) is logged and tried again at the next one.
    """
    while not stop.is_set():
        try:
            result = await purge(db, now_ms=now_ms(), telemetry_days=telemetry_days,
                                 quarantine_days=quarantine_days, batch_rows=batch_rows)
        except Exception as e:  # the server goes on; the rows are still there for the next pass
            log.warning("retention pass failed, retrying in %.0f s: %r", every_s, e)
            result = None
        if result is not None and on_pass is not None:
            on_pass(result)
        try:
            await wait_within(stop.wait(), every_s)  # never wait_for: it can lose a stop
        except TimeoutError:
            pass
