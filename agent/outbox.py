"""The store-and-forward outbox: every uplink message lives here until the broker acknowledged it.

SQLite in WAL mode (schema in agent/outbox_schema.py), one writer task, `synchronous=FULL`:
- `send()` returns once the message is committed. Alarms and receipts commit at once; other classes
  are group-committed: every message that arrives within `commit_interval_ms` shares one transaction,
  so a burst of thousands per second costs a few fsyncs.
- `seq` is assigned by the writer, in commit order. AUTOINCREMENT keeps it from being reused after
  deletes; `outbox.seq` beside the database holds a reserved high-water mark, written (fsync + rename)
  once per SEQ_RESERVE messages, so even a database moved aside as corrupt never brings an old seq back.
- The drain side (agent.link) reads committed rows through a second connection, highest class first,
  FIFO within a class, and calls `ack(seq)` on PUBACK; the row is deleted only then.
- Bounded by `max_bytes` of envelope payload: to make room, telemetry is evicted oldest first, then
  events; alarms and receipts are never evicted. A new message may evict only its own class or lower
  ones, so telemetry never pushes out an event; when nothing may be evicted, telemetry and events are
  refused (counted) while alarms and receipts are still taken. Telemetry also expires after
  `telemetry_ttl_s`. Every eviction, expiry and refusal is counted in `counters` (reported in the
  heartbeat).
- A message that cannot be encoded (e.g. text with a lone surrogate, a value JSON cannot hold) fails its
  own `send()` with `OutboxUnencodable` (counted as `unencodable.<class>`); the rest of its commit is
  stored as if it had never been there, and it takes no seq.
- Any error of the commit's own writes (SQLite, or an OSError writing the seq high-water mark) settles or
  requeues every message of the batch; the writer task never ends on one. A full disk (SQLITE_FULL, also
  raised by `max_file_bytes`, or ENOSPC/EDQUOT from the high-water-mark file): telemetry and events in the
  failed batch are refused, old telemetry is evicted to make room, and alarms and receipts wait in memory
  and are retried every second: their `send()` does not return until they are durable.
- Memory: SQLite's page cache is CACHE_KIB per connection, the drain reads FETCH_CHUNK rows at a time, and
  after a reclaim pass the C heap's free pages go back to the OS (malloc_trim), so RSS falls after a drain.
- Space is given back: new files use `auto_vacuum=INCREMENTAL`, and when at least half of the file is free
  pages (and at least RECLAIM_MIN_PAGES) the writer returns them to the file system in steps of
  RECLAIM_STEP_PAGES between commits, so a drained 1M-row backlog does not keep its 300 MB. A file made by an
  older agent (auto_vacuum off) is converted with one VACUUM once its live content is at most
  CONVERT_MAX_BYTES (at start, or when a drain gets it there), which costs a copy of that little content.
- A damaged database (agent.sqlite_store.is_corruption) is moved aside (with its -wal and -shm) and a
  fresh one is created; an `event` of kind `outbox_reset` reports it. Never a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from agent.clock import Clock, SystemClock
from agent.fsutil import write_atomic
from agent.outbox_schema import MIGRATIONS
from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.text import escape, quoted
from agent.sqlite_store import SchemaTooNew, auto_vacuum_mode, is_corruption, move_aside, open_sqlite
from drivers.aio import wait_within

log = logging.getLogger("agent.outbox")

SEQ_RESERVE = 100_000  # seqs reserved per write of the high-water mark file
FETCH_CHUNK = 500
TTL_SWEEP_S = 60.0
DISK_RETRY_S = 1.0
RECLAIM_MIN_PAGES = 256  # free pages (1 MiB at 4 KiB) before any are given back to the file system
RECLAIM_STEP_PAGES = 128  # pages per incremental_vacuum step: one short transaction between commits
CONVERT_MAX_BYTES = 4 << 20  # an old file (auto_vacuum off) is converted only when its live content is this small
JOURNAL_SIZE_LIMIT = 4 << 20  # the WAL is cut back to this after a checkpoint
CACHE_KIB = 512  # SQLite page cache per connection (SQLite's default is 2000 KiB): the drain reads in order
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# which classes a new message of a class may evict, in the order they are evicted
_EVICTABLE: dict[MsgClass, tuple[MsgClass, ...]] = {
    MsgClass.ALARM: (MsgClass.TELEMETRY, MsgClass.EVENT),
    MsgClass.RECEIPT: (MsgClass.TELEMETRY, MsgClass.EVENT),
    MsgClass.EVENT: (MsgClass.TELEMETRY, MsgClass.EVENT),
    MsgClass.TELEMETRY: (MsgClass.TELEMETRY,),
}
_URGENT = (MsgClass.ALARM, MsgClass.RECEIPT)


class OutboxError(Exception):
    """The outbox cannot take or give messages."""


class OutboxRefused(OutboxError):
    """A telemetry or event message refused because the outbox (or the disk) is full. Counted."""


class OutboxUnencodable(OutboxError):
    """A message that cannot be encoded as an envelope (or stored as a row). Refused to its own caller
    only; counted as `unencodable.<class>`."""


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    cls: MsgClass
    kind: str
    body: bytes


@dataclass(slots=True)
class _Pending:
    cls: MsgClass
    kind: str
    data: dict[str, Any]
    ts: int
    future: asyncio.Future[Envelope]
    refused: bool = False  # answered with an error: never stored, whatever happens to its batch


@dataclass(slots=True)
class _Delta:
    """In-memory bookkeeping of one transaction, applied only after it commits."""

    count: dict[MsgClass, int] = field(default_factory=lambda: dict.fromkeys(MsgClass, 0))
    size: dict[MsgClass, int] = field(default_factory=lambda: dict.fromkeys(MsgClass, 0))
    counters: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: dict[str, int]
    bytes: int
    oldest_ts: dict[str, int | None]
    counters: dict[str, int]


class Outbox:
    """Durable uplink queue. A Service (run it under the supervisor) and the `Uplink` features use."""

    name = "outbox"

    def __init__(
        self,
        path: Path,
        box: str,
        *,
        max_bytes: int,
        telemetry_ttl_s: float,
        commit_interval_s: float = 0.02,
        max_file_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self.box = box
        self.max_bytes = max_bytes
        self.telemetry_ttl_s = telemetry_ttl_s
        self.commit_interval_s = commit_interval_s
        self.max_file_bytes = max_file_bytes
        self.clock = clock or SystemClock()
        self.available = asyncio.Event()  # set when rows may be waiting for the drain
        self._opened = asyncio.Event()
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._pending: deque[_Pending] = deque()
        self._acks: list[int] = []
        self._acked: set[int] = set()  # acked, delete not yet committed: never fetch again
        self._cursor: dict[MsgClass, int] = dict.fromkeys(MsgClass, 0)
        self._count: dict[MsgClass, int] = dict.fromkeys(MsgClass, 0)
        self._size: dict[MsgClass, int] = dict.fromkeys(MsgClass, 0)
        self._counters: dict[str, int] = {}
        self._next_seq = 1
        self._hwm = 0
        self._last_ttl_sweep = float("-inf")
        self._disk_full_since: float | None = None
        self._unsaved: dict[str, int] = {}  # counted while the store could not take it; saved by the next commit
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self.reset_reason: str | None = None  # set when a bad database was moved aside at open
        self.commits = 0  # transactions committed: group commit keeps this far below the message count
        self.reclaimed = asyncio.Event()  # set each time a reclaim pass has given free pages back
        self._check_free = True  # rows were deleted since the free pages were last looked at
        self._reclaiming = False  # a reclaim pass is under way: one step per turn of the writer
        self._incremental = False  # the file has auto_vacuum=INCREMENTAL

    # ---------------------------------------------------------------- Uplink
    def send_nowait(
        self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None
    ) -> asyncio.Future[Envelope]:
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        ts = int(self.clock.time() * 1000) if ts_ms is None else int(ts_ms)
        self._pending.append(_Pending(MsgClass(cls), kind, data, ts, future))
        self._wake.set()
        if cls in _URGENT:
            self._urgent.set()
        return future

    async def send(
        self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None
    ) -> Envelope:
        # shield: a caller that is cancelled stops waiting, but the message is still stored
        return await asyncio.shield(self.send_nowait(cls, kind, data, ts_ms))

    # ---------------------------------------------------------------- drain side
    async def wait_open(self) -> None:
        await self._opened.wait()

    def depth(self) -> dict[MsgClass, int]:
        return dict(self._count)

    async def next_batch(self, limit: int, *, max_cls: MsgClass = MsgClass.TELEMETRY) -> list[Row]:
        """Up to `limit` committed rows not handed out since the last rewind, best class first."""
        assert self._reader is not None, "outbox not open"
        rows: list[Row] = []
        for cls in MsgClass:
            if cls > max_cls or len(rows) >= limit:
                break
            while self._count[cls] and len(rows) < limit:
                cur = await self._reader.execute(
                    "SELECT seq, kind, body FROM outbox WHERE cls = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (int(cls), self._cursor[cls], min(FETCH_CHUNK, limit - len(rows))),
                )
                got = list(await cur.fetchall())
                await cur.close()
                if not got:
                    break
                self._cursor[cls] = got[-1][0]
                rows.extend(Row(s, cls, k, bytes(b)) for s, k, b in got if s not in self._acked)
        return rows

    def ack(self, seq: int) -> None:
        """The broker acknowledged `seq`: delete it with the next commit."""
        if seq in self._acked:
            return
        self._acked.add(seq)
        self._acks.append(seq)
        self._wake.set()

    def thin(self, seq: int) -> None:
        """A telemetry row the link will not send (the monthly 4G budget thins it, agent/uplink_usage.py):
        deleted with the next commit like an acknowledged one, and counted as `thinned.telemetry`."""
        if seq in self._acked:
            return
        self.ack(seq)
        self._count_now("thinned.telemetry")

    def rewind(self) -> None:
        """Hand out every unacknowledged row again (after a reconnect: paho's in-flight state is gone)."""
        self._cursor = dict.fromkeys(MsgClass, 0)
        if any(self._count.values()):
            self.available.set()

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    async def stats(self) -> OutboxStats:
        oldest: dict[str, int | None] = {}
        for cls in MsgClass:
            ts = None
            if self._count[cls] and self._reader is not None:
                cur = await self._reader.execute(
                    "SELECT ts FROM outbox WHERE cls = ? ORDER BY seq LIMIT 1", (int(cls),))
                row = await cur.fetchone()
                await cur.close()
                ts = row[0] if row else None
            oldest[cls.wire] = ts
        return OutboxStats(
            depth={c.wire: n for c, n in self._count.items()},
            bytes=sum(self._size.values()),
            oldest_ts=oldest,
            counters=dict(self._counters),
        )

    # ---------------------------------------------------------------- service
    async def run(self, ready: Callable[[], None]) -> None:
        try:
            await self._open()
            ready()
            if self.reset_reason is not None:
                self.send_nowait(MsgClass.EVENT, "outbox_reset", {"reason": self.reset_reason})
            while True:
                if not (self._check_free or self._reclaiming):
                    await self._wake.wait()
                if self._wake.is_set():
                    if not self._urgent.is_set():
                        with contextlib.suppress(TimeoutError):
                            await wait_within(self._urgent.wait(), self.commit_interval_s)  # not wait_for
                    await self._commit_pending()
                if not self._urgent.is_set():  # an alarm that came in meanwhile is stored first
                    await self._reclaim()
        finally:
            # flush what callers were promised, then close; shielded so cancellation can't cut it
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        if self._db is not None and (self._pending or self._acks):
            await self._commit_pending(final=True)
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(OutboxError("outbox closed before the message was stored"))
        self._pending.clear()
        for conn in (self._reader, self._db):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._db = self._reader = None

    # ---------------------------------------------------------------- open / recover
    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._open_db()
        except sqlite3.DatabaseError as exc:
            # only a damaged file is moved aside; "locked", "read-only", I/O errors and a schema from a
            # newer agent are raised (the agent exits, systemd retries) so no queued alarm is sidelined
            if not is_corruption(exc):
                await self._close_conns()
                raise
            await self._close_conns()
            moved = move_aside(self.path)
            salvaged = await asyncio.to_thread(_salvage, moved)
            self.reset_reason = (f"database unusable ({exc}); moved aside to {moved.name}; "
                                 f"{len(salvaged)} rows salvaged")
            log.error("outbox: %s; starting a fresh one", self.reset_reason)
            await self._open_db(salvaged=salvaged)
        self._opened.set()
        if any(self._count.values()):
            self.available.set()

    async def _open_db(self, salvaged: list[tuple[int, int, int, str, bytes]] | None = None) -> None:
        try:
            db = self._db = await open_sqlite(self.path, migrations=MIGRATIONS, max_file_bytes=self.max_file_bytes,
                                              auto_vacuum="INCREMENTAL")
        except SchemaTooNew as exc:
            raise OutboxError(f"{exc} (the queued messages are kept)") from exc
        await db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        await db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._incremental = await auto_vacuum_mode(db) == "INCREMENTAL"
        self._check_free = True
        if salvaged:
            await db.executemany("INSERT OR IGNORE INTO outbox (seq, cls, ts, kind, body) VALUES (?, ?, ?, ?, ?)",
                                 salvaged)
            await db.commit()
        cur = await db.execute("SELECT cls, count(*), coalesce(sum(length(body)), 0) FROM outbox GROUP BY cls")
        for cls, n, size in await cur.fetchall():
            self._count[MsgClass(cls)] = n
            self._size[MsgClass(cls)] = size
        cur = await db.execute("SELECT name, value FROM counters")
        self._counters = {name: value for name, value in await cur.fetchall()}
        cur = await db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        row = await cur.fetchone()
        db_max = row[0] if row else 0
        self._hwm = await asyncio.to_thread(_read_hwm, self._hwm_path)
        # an intact database knows its last seq; a fresh or rebuilt one starts above everything ever reserved
        self._next_seq = max(db_max + 1, self._hwm) if salvaged is not None else (db_max + 1 if db_max
                                                                                    else max(1, self._hwm))
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute("PRAGMA query_only=ON")
        await self._reader.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    async def _close_conns(self) -> None:
        for conn in (self._reader, self._db):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._db = self._reader = None

    @property
    def _hwm_path(self) -> Path:
        return self.path.with_name(self.path.name + ".seq")

    # ---------------------------------------------------------------- the writer
    async def _commit_pending(self, *, final: bool = False) -> None:
        self._wake.clear()
        self._urgent.clear()
        batch = list(self._pending)
        self._pending.clear()
        acks, self._acks = self._acks, []
        # shielded and awaited on every path: a stop (cancellation) never cuts a commit in half, and
        # the callers of the messages in it get their answer before the outbox closes
        commit = asyncio.ensure_future(self._commit(batch, acks))
        try:
            stored = await asyncio.shield(commit)
        except asyncio.CancelledError:
            try:
                stored = await commit
            except Exception:  # every error of our own writes: requeue, _close retries once
                self._pending.extendleft(reversed([p for p in batch if not _answered(p)]))
                self._acks = acks + self._acks
                raise asyncio.CancelledError from None
            self._settle(stored, acks)
            raise
        except Exception as exc:  # SQLite, OSError from the seq file, anything: never end the writer
            await self._after_failed_commit(exc, batch, acks, final)
            return
        self._settle(stored, acks)

    def _settle(self, stored: list[tuple[_Pending, Envelope]], acks: list[int]) -> None:
        self._disk_full_since = None
        for pending, env in stored:
            if not pending.future.done():
                pending.future.set_result(env)
        self._acked.difference_update(acks)
        if stored:
            self.available.set()

    async def _commit(self, batch: list[_Pending], acks: list[int]) -> list[tuple[_Pending, Envelope]]:
        db = self._db
        assert db is not None
        delta = _Delta()
        next_seq = self._next_seq
        stored: list[tuple[_Pending, Envelope]] = []
        inserts: list[tuple[int, int, int, str, bytes]] = []
        try:
            if acks:
                await self._delete_acked(db, acks, delta)
                self._check_free = True
            await self._expire_telemetry(db, delta)
            for pending in batch:
                if _answered(pending):  # refused in an earlier try of this batch
                    continue
                env = Envelope(self.box, next_seq, pending.ts, pending.cls, pending.kind, pending.data)
                try:
                    body = _row_body(env)
                except Exception as exc:  # whatever encode raises, it is this message's alone
                    self._unencodable(pending, exc)
                    continue
                if not await self._make_room(db, pending.cls, len(body), delta):
                    self._count_now(f"refused.{pending.cls.wire}")
                    pending.refused = True
                    if not pending.future.done():
                        pending.future.set_exception(OutboxRefused(f"outbox full ({self.max_bytes} bytes)"))
                    continue
                inserts.append((env.seq, int(env.cls), env.ts, env.kind, body))
                delta.count[env.cls] += 1
                delta.size[env.cls] += len(body)
                stored.append((pending, env))
                next_seq += 1
            if inserts:
                await db.executemany(
                    "INSERT INTO outbox (seq, cls, ts, kind, body) VALUES (?, ?, ?, ?, ?)", inserts)
            await _save_counters(db, delta.counters, self._unsaved)
            if next_seq > self._hwm:
                hwm = next_seq + SEQ_RESERVE
                await asyncio.to_thread(_write_hwm, self._hwm_path, hwm)
                self._hwm = hwm
            await db.commit()
            self.commits += 1
        except BaseException:
            with contextlib.suppress(Exception):
                await db.rollback()
            raise
        self._next_seq = next_seq
        self._unsaved = {}
        for cls in MsgClass:
            self._count[cls] += delta.count[cls]
            self._size[cls] += delta.size[cls]
        for name, n in delta.counters.items():
            self._counters[name] = self._counters.get(name, 0) + n
        return stored

    def _count_now(self, name: str) -> int:
        """Count a refusal at once (it holds whatever happens to the commit); saved by the next commit."""
        n = self._counters[name] = self._counters.get(name, 0) + 1
        self._unsaved[name] = self._unsaved.get(name, 0) + 1
        return n

    def _unencodable(self, pending: _Pending, exc: Exception) -> None:
        """Answer one message that cannot become a row; counted at once (saved with the next commit)."""
        n = self._count_now(f"unencodable.{pending.cls.wire}")
        reason = f"{pending.cls.wire} message {quoted(pending.kind)} cannot be encoded: {_describe(exc)}"
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...: a flood of them is one line per doubling
            log.warning("outbox: refused a message (%d so far): %s", n, reason)
        if not pending.future.done():  # a caller may have cancelled its future: the count stays
            pending.future.set_exception(OutboxUnencodable(reason))
        pending.refused = True

    async def _delete_acked(self, db: aiosqlite.Connection, acks: list[int], delta: _Delta) -> None:
        for i in range(0, len(acks), 500):
            chunk = acks[i:i + 500]
            marks = ",".join("?" * len(chunk))
            cur = await db.execute(f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING cls, length(body)", chunk)
            for cls, size in await cur.fetchall():
                delta.count[MsgClass(cls)] -= 1
                delta.size[MsgClass(cls)] -= size
            await cur.close()

    async def _evict_oldest(self, db: aiosqlite.Connection, cls: MsgClass, need: int, delta: _Delta,
                            reason: str, before_ts: int | None = None) -> int:
        """Delete the oldest rows of `cls` until `need` bytes are freed (or, with before_ts, while older)."""
        freed = 0
        while freed < need and self._count[cls] + delta.count[cls] > 0:
            cur = await db.execute(
                "SELECT seq, ts, length(body) FROM outbox WHERE cls = ? ORDER BY seq LIMIT 256", (int(cls),))
            rows = list(await cur.fetchall())
            await cur.close()
            if not rows:
                break
            upto = None
            for seq, ts, size in rows:
                if freed >= need or (before_ts is not None and ts >= before_ts):
                    break
                upto, freed = seq, freed + size
                delta.count[cls] -= 1
                delta.size[cls] -= size
                delta.bump(f"{reason}.{cls.wire}")
            if upto is None:
                break
            await db.execute("DELETE FROM outbox WHERE cls = ? AND seq <= ?", (int(cls), upto))
            self._check_free = True
            if before_ts is not None and upto != rows[-1][0]:
                break
        return freed

    async def _make_room(self, db: aiosqlite.Connection, cls: MsgClass, size: int, delta: _Delta) -> bool:
        total = sum(self._size.values()) + sum(delta.size.values())
        over = total + size - self.max_bytes
        if over <= 0:
            return True
        slack = self.max_bytes // 100  # evict a little more, so a full outbox doesn't delete per insert
        for victim in _EVICTABLE[cls]:
            over -= await self._evict_oldest(db, victim, over + slack if over > 0 else 0, delta, "evicted")
            if over <= 0:
                return True
        return cls in _URGENT  # alarms and receipts are taken even over the limit

    async def _expire_telemetry(self, db: aiosqlite.Connection, delta: _Delta) -> None:
        now = self.clock.monotonic()
        if now - self._last_ttl_sweep < TTL_SWEEP_S or not self._count[MsgClass.TELEMETRY]:
            return
        self._last_ttl_sweep = now
        cutoff = int((self.clock.time() - self.telemetry_ttl_s) * 1000)
        await self._evict_oldest(db, MsgClass.TELEMETRY, 1 << 62, delta, "expired", before_ts=cutoff)

    async def _after_failed_commit(self, exc: Exception, batch: list[_Pending], acks: list[int],
                                   final: bool) -> None:
        """The commit of `batch` failed as a whole: refuse its telemetry and events, requeue its alarms and
        receipts (retried every DISK_RETRY_S), keep the deletes for the next commit."""
        full = _is_full(exc)
        if self._disk_full_since is None:
            self._disk_full_since = self.clock.monotonic()
            log.error("outbox: commit failed (%s); refusing telemetry and events, holding alarms and "
                      "receipts in memory until the store takes them", "disk full" if full else _describe(exc))
        urgent = [p for p in batch if p.cls in _URGENT and not _answered(p)]
        for pending in batch:
            if pending.cls not in _URGENT and not _answered(pending):
                self._count_now(f"refused.{pending.cls.wire}")
                pending.refused = True
                if not pending.future.done():
                    pending.future.set_exception(
                        OutboxRefused("store full" if full else f"store error: {_describe(exc)}"))
        self._acks = acks + self._acks  # deletes are retried with the next commit
        if full:
            await self._free_space()
        self._pending.extendleft(reversed(urgent))
        if self._pending or self._acks:
            if final:
                return
            await asyncio.sleep(DISK_RETRY_S)
            self._wake.set()
            if self._pending:
                self._urgent.set()

    # ---------------------------------------------------------------- giving space back
    async def _reclaim(self) -> None:
        """One turn of giving free pages back to the file system; a no-op unless rows were deleted.

        A pass starts when at least half of the file (and RECLAIM_MIN_PAGES) is free, and goes on, one
        RECLAIM_STEP_PAGES step per turn of the writer (so a message waits one short step at most), until
        fewer than a step's worth are free; then a checkpoint lets SQLite cut the file. An old file with
        auto_vacuum off is converted by one VACUUM once its live content is at most CONVERT_MAX_BYTES.
        """
        db = self._db
        if db is None or not (self._check_free or self._reclaiming):
            return
        self._check_free = False
        try:
            pages, free = await _pragma_int(db, "page_count"), await _pragma_int(db, "freelist_count")
            if not self._reclaiming and free < max(RECLAIM_MIN_PAGES, pages // 2):
                return
            if not self._incremental:
                page_size = await _pragma_int(db, "page_size")
                if (pages - free) * page_size > CONVERT_MAX_BYTES:
                    return  # converting now would copy the whole backlog: wait until it is drained
                await db.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
                self._incremental = await auto_vacuum_mode(db) == "INCREMENTAL"
                log.info("outbox: converted the file to incremental auto-vacuum (%d of %d pages were free)",
                         free, pages)
                free = 0
            else:
                self._reclaiming = True
                # executescript steps the pragma to the end (execute() would free one page per call)
                await db.executescript(f"PRAGMA incremental_vacuum({RECLAIM_STEP_PAGES});")
                if free > RECLAIM_STEP_PAGES:
                    return  # the next step on the writer's next turn
            self._reclaiming = False
            async with db.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:  # SQLite cuts the file once
                await cur.fetchall()                                            # the WAL is all copied back
            _release_memory()
            self.reclaimed.set()
        except Exception as exc:  # giving space back is best effort: the next delete retries
            self._reclaiming = False
            with contextlib.suppress(Exception):
                await db.rollback()
            log.warning("outbox: could not give free space back: %s", _describe(exc))

    async def _free_space(self) -> None:
        """On a full store, drop a tenth of the telemetry (then events) so alarms fit again."""
        db = self._db
        assert db is not None
        for cls in (MsgClass.TELEMETRY, MsgClass.EVENT):
            if not self._count[cls]:
                continue
            delta = _Delta()
            try:
                await self._evict_oldest(db, cls, max(1, self._size[cls] // 10), delta, "evicted")
                await _save_counters(db, delta.counters)  # in the same transaction as the evictions
                await db.commit()
            except Exception as exc:  # best effort; the alarms are retried anyway
                with contextlib.suppress(Exception):
                    await db.rollback()
                log.warning("outbox: could not free space: %s", _describe(exc))
                return
            for c in MsgClass:
                self._count[c] += delta.count[c]
                self._size[c] += delta.size[c]
            for name, n in delta.counters.items():
                self._counters[name] = self._counters.get(name, 0) + n
            return


def _salvage(path: Path) -> list[tuple[int, int, int, str, bytes]]:
    """Whatever rows can still be read from a damaged outbox, so a moved-aside file loses as little as it can."""
    rows: list[tuple[int, int, int, str, bytes]] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return rows
    try:
        for row in db.execute("SELECT seq, cls, ts, kind, body FROM outbox ORDER BY seq"):
            seq, cls, ts, kind, body = row
            if isinstance(seq, int) and cls in (0, 1, 2, 3) and isinstance(body, (bytes, str)):
                rows.append((seq, cls, int(ts), str(kind), bytes(body, "utf-8") if isinstance(body, str) else body))
    except (sqlite3.Error, ValueError, TypeError):
        pass  # read up to the damage: every row before it is kept
    finally:
        db.close()
    return rows


async def _save_counters(db: aiosqlite.Connection, *deltas: dict[str, int]) -> None:
    total: dict[str, int] = {}
    for delta in deltas:
        for name, n in delta.items():
            total[name] = total.get(name, 0) + n
    if total:
        await db.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            list(total.items()),
        )


def _release_memory() -> None:
    """After a drain, hand the C heap's free pages back to the OS (glibc's malloc_trim): SQLite's threads
    and paho's each keep a malloc arena that otherwise stays at its peak. Elsewhere a no-op."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        with contextlib.suppress(Exception):  # not glibc (musl, macOS): nothing to trim
            import ctypes  # imported on the first drain only: an idle agent does not pay for it

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


async def _pragma_int(db: aiosqlite.Connection, name: str) -> int:
    cur = await db.execute(f"PRAGMA {name}")
    row = await cur.fetchone()
    await cur.close()
    return int(row[0]) if row else 0


def _answered(pending: _Pending) -> bool:
    return pending.refused


def _row_body(env: Envelope) -> bytes:
    """The envelope as the row stores it, or the error that makes this one message unstorable: everything
    SQLite binds from the caller is checked here, so no row can fail the INSERT of the others."""
    if type(env.kind) is not str:
        raise TypeError(f"kind must be a str, not {type(env.kind).__name__}")
    env.kind.encode("utf-8")  # stored as TEXT: a lone surrogate would fail the whole INSERT
    if not -(1 << 63) <= env.ts < 1 << 63:
        raise OverflowError("ts does not fit in 64 bits")
    body = env.encode()
    if type(body) is not bytes:
        raise TypeError(f"encode() gave {type(body).__name__}, not bytes")
    return body


def _is_full(exc: BaseException) -> bool:
    """A full disk or store: SQLITE_FULL (also from max_page_count), or ENOSPC / EDQUOT from a file write."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)
    return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {escape(exc)}"


def _read_hwm(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _write_hwm(path: Path, value: int) -> None:
    write_atomic(path, f"{value}\n".encode())
