"""Read queries over what ingest stored, for the API (S3's part): per-box seq gaps.

A box numbers its envelopes with a `seq` that rises strictly and is never reused (contract section 4),
so between the lowest and the highest stored seq of a box every number is either stored, or was dropped
on the box by its outbox policy (telemetry and events evicted to make room, telemetry expired), or is
*missing*: lost on the way, or still on its way. The box reports its policy drops in every heartbeat
(`data.outbox.counters`: `evicted.telemetry`, `evicted.event`, `expired.telemetry`, ...; cumulative for
the life of its outbox), so

    missing = max(0, (max_seq - min_seq + 1) - stored - explained - purged)

with `explained` the sum of the eviction/expiry counters of the box's newest heartbeat and `purged` the
envelopes of the box that the county's own retention deleted (`boxes.purged`). `min_seq` and the number
ever stored are counters ingest keeps on the box's row (`boxes.min_seq`, `boxes.stored`, with
`boxes.last_seq` as `max_seq`), so `stored` here (still stored) is `boxes.stored - boxes.purged`.

Known limits (documented in docs/county-server.md, "Ingest"): the counters cover the whole life of the
box's outbox, also drops before the first seq the county stored, so `missing` can only be under-stated,
never over-stated by them; a box whose outbox was reset (an `outbox_reset` event) restarts its counters;
on a database migrated to 0003 after retention ran, `min_seq` is the lowest seq still stored then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from county.store.tables import boxes

# heartbeat counters that name seqs the box itself dropped (agent/outbox.py `_evict_oldest`)
EXPLAINING_PREFIXES = ("evicted.", "expired.")


@dataclass(frozen=True, slots=True)
class SeqGaps:
    box: str
    min_seq: int
    max_seq: int
    stored: int
    explained: int  # seqs the box's counters say it dropped by policy
    purged: int  # envelopes the county's retention deleted
    missing: int  # the gap neither explains

    def to_json(self) -> dict[str, Any]:
        return {"box": self.box, "min_seq": self.min_seq, "max_seq": self.max_seq, "stored": self.stored,
                "explained": self.explained, "purged": self.purged, "missing": self.missing}


def explained_by(heartbeat: Any) -> int:
    """The number of seqs a heartbeat's `outbox.counters` say the box dropped by policy (0 when unknown)."""
    if not isinstance(heartbeat, dict):
        return 0
    outbox = heartbeat.get("outbox")
    counters = outbox.get("counters") if isinstance(outbox, dict) else None
    if not isinstance(counters, dict):
        return 0
    total = 0
    for name, value in counters.items():
        if (isinstance(name, str) and name.startswith(EXPLAINING_PREFIXES) and isinstance(value, int)
                and not isinstance(value, bool) and value > 0):
            total += value
    return total


async def seq_gaps(conn: AsyncConnection, box: str | None = None) -> list[SeqGaps]:
    """Per box (or only `box`): the stored seq range, and how much of its gap the box does not explain.

    Reads the `boxes` table only (its counters are kept by ingest, county/ingest.py `Store._boxes`), so a
    boxes list costs one row per box however many messages are stored. A box of which nothing was stored
    (a state message only) has no range and is left out.
    """
    q = (select(boxes.c.id, boxes.c.min_seq, boxes.c.last_seq, boxes.c.stored, boxes.c.purged, boxes.c.heartbeat)
         .where(boxes.c.min_seq.is_not(None), boxes.c.last_seq.is_not(None), boxes.c.stored > 0)
         .order_by(boxes.c.id))
    if box is not None:
        q = q.where(boxes.c.id == box)
    out = []
    for b, lo, hi, ever, purged, heartbeat in (await conn.execute(q)).all():
        explained = explained_by(heartbeat)
        ever, purged = int(ever), int(purged or 0)
        span = int(hi) - int(lo) + 1
        # `stored` ever = still stored + purged, so the gap is span - ever - explained
        out.append(SeqGaps(b, int(lo), int(hi), max(0, ever - purged), explained, purged,
                           max(0, span - ever - explained)))
    return out
