"""The audit log: append-only rows, hash-chained, checked by `village county audit check -c FILE`.

Each row's `hash` is sha256 over the previous row's hash and the canonical JSON (sorted keys, no spaces,
UTF-8) of the row's own fields `seq, ts, actor, action, target, detail`; the first row's previous hash is
64 zeros. `seq` is given explicitly (1, 2, 3, ...), so a row edited in the database no longer matches its
hash, a row deleted in the middle leaves a gap whose next row does not chain to the one before, and a
row renumbered breaks its own hash. Rows deleted at the end are found only against a head recorded
earlier: `audit check` prints the head (`seq` and `hash`) and `--head SEQ:HASH` checks it is still there.

Anyone who can write to the database can also recompute the whole chain: the chain makes tampering
visible to whoever kept an earlier head, it is not a signature.

`append` writes in the caller's transaction (the action and its audit row commit together). Several
instances appending at once each take the next `seq`; the loser of a race gets a unique-key conflict
inside a savepoint, reads the new last row and chains onto it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from agent.i18n import N_
from county.store.tables import audit

GENESIS = "0" * 64
MAX_ATTEMPTS = 50
BATCH = 1000


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(prev_hash: str, seq: int, ts: int, actor: str, action: str, target: str | None, detail: str) -> str:
    body = canonical({"seq": seq, "ts": ts, "actor": actor, "action": action, "target": target, "detail": detail})
    return hashlib.sha256((prev_hash + body).encode("utf-8", "surrogatepass")).hexdigest()


async def append(conn: Any, actor: str, action: str, target: str | None, detail: dict[str, Any] | None = None,
                 *, ts: int | None = None) -> int:
    """Add one row in the caller's transaction (`conn` an AsyncConnection inside `db.begin()`); returns its seq."""
    when = int(time.time() * 1000) if ts is None else ts
    text = canonical(detail or {})
    actor, action = actor[:64], action[:32]
    for _ in range(MAX_ATTEMPTS):
        last = (await conn.execute(select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1))).first()
        seq = int(last.seq) + 1 if last is not None else 1
        prev = str(last.hash) if last is not None else GENESIS
        row = {"seq": seq, "ts": when, "actor": actor, "action": action, "target": target, "detail": text,
               "prev_hash": prev, "hash": row_hash(prev, seq, when, actor, action, target, text)}
        try:
            async with conn.begin_nested():
                await conn.execute(insert(audit), row)
        except IntegrityError:
            continue  # another instance took this seq: chain onto its row
        return seq
    raise RuntimeError(N_("audit: no free seq after {max_attempts} attempts", max_attempts=MAX_ATTEMPTS))


@dataclass(frozen=True, slots=True)
class Broken:
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"row seq={self.seq}: {self.problem}"


@dataclass(frozen=True, slots=True)
class Report:
    rows: int
    head_seq: int | None
    head_hash: str | None
    broken: Broken | None


async def verify(db: Any, head: tuple[int, str] | None = None) -> Report:
    """Walk the whole chain in `seq` order (in batches); the first broken row, if any, in `broken`.
    `head` (seq, hash) recorded earlier must still be there, unchanged."""
    rows = 0
    prev_seq, prev_hash = 0, GENESIS
    seen_head = head is None
    async with db.connect() as conn:
        while True:
            batch = (await conn.execute(
                select(audit).where(audit.c.seq > prev_seq).order_by(audit.c.seq).limit(BATCH))).mappings().all()
            if not batch:
                break
            for r in batch:
                seq = int(r["seq"])
                broken = _check_row(r, prev_seq, prev_hash)
                if broken is not None:
                    return Report(rows, prev_seq or None, prev_hash if prev_seq else None, broken)
                if head is not None and seq == head[0]:
                    if r["hash"] != head[1]:
                        return Report(rows, prev_seq or None, None,
                                      Broken(seq, N_("hash is {hash}, the recorded head says {head}",
                                                     hash=r["hash"], head=head[1])))
                    seen_head = True
                rows += 1
                prev_seq, prev_hash = seq, str(r["hash"])
    if not seen_head and head is not None:
        return Report(rows, prev_seq or None, prev_hash if prev_seq else None,
                      Broken(head[0], N_("the recorded head row is missing (the log ends at seq={seq}): "
                                         "rows were deleted at the end", seq=prev_seq)))
    return Report(rows, prev_seq or None, prev_hash if prev_seq else None, None)


def _check_row(r: Any, prev_seq: int, prev_hash: str) -> Broken | None:
    seq = int(r["seq"])
    expected = row_hash(str(r["prev_hash"]), seq, int(r["ts"]), str(r["actor"]), str(r["action"]), r["target"],
                        str(r["detail"]))
    if r["hash"] != expected:
        return Broken(seq, N_("its fields do not match its hash (the row was edited)"))
    if seq != prev_seq + 1:
        if seq - 1 > prev_seq + 1:
            return Broken(seq, N_("rows {first}..{last} missing (deleted)", first=prev_seq + 1, last=seq - 1))
        return Broken(seq, N_("row {n} missing (deleted)", n=prev_seq + 1))
    if r["prev_hash"] != prev_hash:
        if not prev_seq:
            return Broken(seq, N_("does not chain to the start of the log (a row before it was edited or replaced)"))
        return Broken(seq, N_("does not chain to row seq={prev} (a row before it was edited or replaced)",
                              prev=prev_seq))
    return None


async def check(db: Any) -> Broken | None:
    """The first broken row, or None when the chain is intact."""
    return (await verify(db)).broken
