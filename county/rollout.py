"""Rollouts of a signed release to the boxes, in waves, halting by itself when too many boxes fail.

A rollout reaches `boxes` (pilot first). Wave 0 is the pilot; each later wave is `wave_size` boxes. A wave is
one signed `agent.update` command (`to` = its boxes, published to each box's cmd topic). The next wave goes
out only when every box of the waves sent so far is done (healthy or failed) or past `wave_timeout_s`
(counted as `timed_out`). Whenever the failed share of the boxes sent so far exceeds `max_failure_pct`,
the rollout is `halted` with the reason, and nothing more is sent. After the last wave: `done`.

Per-box progress comes from the boxes' receipts as the ingest stored them (`receipts`: the latest state per
command and box, its envelope in `messages` for `step`, `detail`, `version`):

    pending      sent, nothing heard yet
    downloading  received / started step=downloading|downloaded
    installed    started step=installed|switching
    healthy      finished (step=healthy)
    rolled_back  failed reason=rolled_back (the detail says why)
    failed       rejected / failed with another reason
    timed_out    no final receipt within wave_timeout_s of its wave

`advance()` is idempotent: the server runs it every few seconds (`run_rollouts`), and on every status read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from county import push
from county.store.tables import messages as messages_t
from county.store.tables import receipts as receipts_t
from county.store.tables import rollouts as rollouts_t

log = logging.getLogger("county.rollout")

FINAL = frozenset({"healthy", "rolled_back", "failed", "timed_out"})
FAILED = frozenset({"rolled_back", "failed", "timed_out"})
ACTIVE = ("pilot", "running")
TTL_S = 3 * 86400  # a box offline for up to three days still takes its wave's command
TICK_S = 5.0

Publish = Callable[[list[str], list[str], str], Awaitable[str | None]]  # (boxes, targets, cmd id) -> error


@dataclass(frozen=True)
class BoxState:
    box: str
    wave: int
    state: str
    reason: str | None = None
    detail: str | None = None
    version: str | None = None
    ts: int | None = None

    def json(self) -> dict[str, Any]:
        return {"box": self.box, "wave": self.wave, "state": self.state, "reason": self.reason,
                "detail": self.detail, "version": self.version, "ts": self.ts}


def progress(receipt_state: str | None, reason: str | None, data: dict[str, Any]) -> str:
    if receipt_state is None:
        return "pending"
    step = data.get("step")
    if receipt_state == "finished":
        return "healthy"
    if receipt_state == "failed" and reason == "rolled_back":
        return "rolled_back"
    if receipt_state in ("rejected", "failed", "expired", "cancelled"):
        return "failed"
    if receipt_state == "started" and step in ("installed", "switching"):
        return "installed"
    return "downloading"


async def box_states(conn: Any, row: Any, now_ms: int) -> list[BoxState]:
    waves = row["waves"] or []
    cmds = [w["cmd"] for w in waves]
    got: dict[tuple[str, str], Any] = {}
    if cmds:
        q = (select(receipts_t.c.cmd, receipts_t.c.box, receipts_t.c.state, receipts_t.c.reason, receipts_t.c.ts,
                    messages_t.c.raw)
             .select_from(receipts_t.outerjoin(messages_t, messages_t.c.id == receipts_t.c.envelope))
             .where(receipts_t.c.cmd.in_(cmds)))
        for r in (await conn.execute(q)).mappings():
            got[(r["cmd"], r["box"])] = r
    out = []
    for i, wave in enumerate(waves):
        for box in wave["boxes"]:
            r = got.get((wave["cmd"], box))
            data: dict[str, Any] = {}
            if r is not None and r["raw"]:
                try:
                    envelope = json.loads(r["raw"])
                    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
                except ValueError:
                    data = {}
            state = progress(r["state"] if r else None, r["reason"] if r else None, data)
            if state not in FINAL and now_ms - int(wave["sent_at"]) > row["wave_timeout_s"] * 1000:
                state = "timed_out"
            detail = data.get("detail")
            out.append(BoxState(box, i, state, r["reason"] if r else None,
                                detail if isinstance(detail, str) else None,
                                data.get("version") if isinstance(data.get("version"), str) else None,
                                r["ts"] if r else None))
    return out


def next_wave(row: Any) -> list[str]:
    sent = sum(len(w["boxes"]) for w in row["waves"] or [])
    boxes = row["boxes"]
    if sent >= len(boxes):
        return []
    size = row["pilot"] if sent == 0 else row["wave_size"]
    return boxes[sent:sent + max(1, size)]


async def advance(db: Any, rollout_id: str, publish: Publish, now_ms: int) -> dict[str, Any] | None:
    """Judge the rollout and send its next wave if due; returns its status (None: no such rollout).

    Safe to run concurrently (the server loop, status reads, several server instances): every change is
    claimed with `rev` (UPDATE ... WHERE rev = the one read), and a wave is published only by the advance
    whose claim won; a wave the broker did not take is un-claimed and tried again on the next advance."""
    async with db.connect() as conn:
        row = (await conn.execute(select(rollouts_t).where(rollouts_t.c.id == rollout_id))).mappings().first()
        if row is None:
            return None
        states = await box_states(conn, row, now_ms)
    row = dict(row)
    if row["state"] not in ACTIVE:
        return status_json(row, states)
    counts = Counter(s.state for s in states)
    failed = sum(counts[s] for s in FAILED)
    sent = len(states)
    new_state, reason, send = row["state"], row["reason"], []
    if sent and failed * 100 > row["max_failure_pct"] * sent:
        new_state = "halted"
        how = ", ".join(f"{counts[s]} {s}" for s in sorted(FAILED) if counts[s])
        reason = f"{failed} of {sent} boxes failed ({how}), over the {row['max_failure_pct']}% allowed"
    elif all(s.state in FINAL for s in states):
        send = next_wave(row)
        if not send and sent:
            new_state = "done"
        elif row["state"] == "pilot" and sent:
            new_state = "running"
    if new_state == row["state"] and not send:
        return status_json(row, states)
    waves = list(row["waves"] or [])
    cmd = f"rollout-{uuid.uuid4().hex[:20]}"
    if send:
        waves.append({"cmd": cmd, "boxes": send, "sent_at": now_ms})
    if not await _claim(db, rollout_id, row["rev"], now_ms, state=new_state, reason=reason, waves=waves):
        return await _current(db, rollout_id, now_ms)  # another advance got there first
    if send:
        error = await publish(send, [f"box:{b}" for b in send], cmd)
        if error is not None:
            log.warning("rollout %s: wave to %d boxes not published: %s (tried again)", rollout_id, len(send), error)
            await _claim(db, rollout_id, row["rev"] + 1, now_ms, state=row["state"], reason=row["reason"],
                         waves=list(row["waves"] or []))
            return await _current(db, rollout_id, now_ms)
    if new_state != row["state"]:
        log.info("rollout %s of %s: %s -> %s%s", rollout_id, row["version"], row["state"], new_state,
                 f" ({reason})" if reason and new_state == "halted" else "")
    return await _current(db, rollout_id, now_ms)


async def _claim(db: Any, rollout_id: str, rev: int, now_ms: int, **values: Any) -> bool:
    async with db.begin() as conn:
        result = await conn.execute(update(rollouts_t).where(rollouts_t.c.id == rollout_id, rollouts_t.c.rev == rev)
                                    .values(rev=rev + 1, updated_at=now_ms, **values))
    return bool(result.rowcount)


async def _current(db: Any, rollout_id: str, now_ms: int) -> dict[str, Any] | None:
    async with db.connect() as conn:
        row = (await conn.execute(select(rollouts_t).where(rollouts_t.c.id == rollout_id))).mappings().first()
        if row is None:
            return None
        return status_json(row, await box_states(conn, row, now_ms))


def status_json(row: Any, states: list[BoxState]) -> dict[str, Any]:
    counts = Counter(s.state for s in states)
    sent = {s.box for s in states}
    return {"id": row["id"], "version": row["version"], "state": row["state"], "reason": row["reason"],
            "targets": row["targets"], "max_failure_pct": row["max_failure_pct"], "wave_size": row["wave_size"],
            "pilot": row["boxes"][:row["pilot"]], "created_by": row["created_by"], "created_at": row["created_at"],
            "updated_at": row["updated_at"], "waves": len(row["waves"] or []),
            "counts": {**dict(sorted(counts.items())), "not_sent": len([b for b in row["boxes"] if b not in sent])},
            "boxes": [s.json() for s in states] + [{"box": b, "wave": None, "state": "not_sent"}
                                                   for b in row["boxes"] if b not in sent]}


def update_command(version: str, digest: str, url: str, targets: list[str], now_s: float,
                   cmd_id: str) -> dict[str, Any]:
    return push.command("agent.update", {"version": version, "manifest_sha256": digest, "url": url}, targets,
                        now=now_s, ttl_s=TTL_S, cmd_id=cmd_id)


async def run_rollouts(db: Any, publish_for: Callable[[Any], Publish], clock: Callable[[], int],
                       stop: asyncio.Event, tick_s: float = TICK_S) -> None:
    """The server's loop: advance every active rollout every tick_s until `stop`."""
    while not stop.is_set():
        try:
            async with db.connect() as conn:
                rows = (await conn.execute(select(rollouts_t).where(rollouts_t.c.state.in_(ACTIVE)))).mappings().all()
            for row in rows:
                await advance(db, row["id"], publish_for(row), clock())
        except Exception:  # a database hiccup: try again next tick, never end the loop
            log.exception("rollouts: advancing failed")
        # asyncio.wait, not wait_for (docs/reliability.md): the server's stop is never swallowed here
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter}, timeout=tick_s)
        finally:
            waiter.cancel()
