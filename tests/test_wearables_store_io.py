"""wearables.db never blocks the event loop, and a geofence_exit is queued before its state is written.

Every SQLite statement in the process is traced (sqlite3.connect is wrapped so that each connection, the
aiosqlite ones included, gets a trace callback recording the thread that ran it). The geofence-state
writes are held on a threading.Event inside that callback while the test, on the loop, watches the alarm
arrive: the loop is provably free while the state write is stuck, and the order is observed, not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.protocol.envelope import Envelope, MsgClass
from agent.wearables.service import GatewayService, WearablesCore
from drivers.wristband.watch import encode_position
from tests.test_wearables_service import cmd, context, make_config, running
from tests.wearables_support import HALF, RecordingUplink, collection, latlon, square, until

HOLD_LIMIT_S = 30.0  # a held write gives up after this (only if the test is broken: it always releases)


@dataclass
class Trace:
    """What ran, in order: ("uplink", kind) when a message is handed to the uplink, ("sql", sql) per statement."""

    loop_thread: int
    events: list[tuple[str, str]] = field(default_factory=list)
    sql_threads: list[tuple[int, str]] = field(default_factory=list)
    hold_tracks: threading.Event = field(default_factory=threading.Event)  # set = fence_track writes may run
    held: threading.Event = field(default_factory=threading.Event)  # a fence_track write is waiting
    lock: threading.Lock = field(default_factory=threading.Lock)
    real_connect: Any = sqlite3.connect

    def sql(self, statement: str) -> None:
        me = threading.get_ident()
        with self.lock:
            self.sql_threads.append((me, statement))
            self.events.append(("sql", statement))
        if "INTO fence_track" in statement and me != self.loop_thread:  # never hang the loop itself
            self.held.set()
            self.hold_tracks.wait(HOLD_LIMIT_S)

    def uplink(self, kind: str) -> None:
        with self.lock:
            self.events.append(("uplink", kind))

    def index(self, kind: str, pred: Any) -> int:
        with self.lock:
            return next(i for i, (k, v) in enumerate(self.events) if k == kind and pred(v))


class OrderedUplink(RecordingUplink):
    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
        self.trace.uplink(kind)
        return await super().send(cls, kind, data, ts_ms)

    def send_nowait(self, cls: MsgClass, kind: str, data: dict[str, Any],
                    ts_ms: int | None = None) -> asyncio.Future[Envelope]:
        self.trace.uplink(kind)
        return super().send_nowait(cls, kind, data, ts_ms)


def frames_seen(gw: GatewayService, n: int) -> Callable[[], bool]:
    return lambda: gw.reader is not None and gw.reader.codec.stats.frames >= n


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trace]:
    t = Trace(loop_thread=threading.get_ident())  # pytest-asyncio runs the test's loop in this thread
    t.hold_tracks.set()
    real = t.real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        conn.set_trace_callback(t.sql)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield t
    t.hold_tracks.set()  # never leave a store thread waiting


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


async def test_a_geofence_exit_is_queued_before_its_state_is_written_and_sqlite_never_runs_on_the_loop(
        tmp_path: Path, pty: tuple[int, str], trace: Trace) -> None:
    master, path = pty
    clock = ManualClock()
    cfg = make_config(tmp_path, path)
    uplink = OrderedUplink(trace)
    ctx, _, handlers = context(cfg, clock, uplink)
    async with running(ctx) as services:
        core, gw = services[0], services[1]
        assert isinstance(core, WearablesCore) and isinstance(gw, GatewayService) and gw.reader is not None
        await handlers.handlers["geofence.set"](cmd("geofence.set", {
            "fences": collection(square()), "crs": "WGS84", "assign": {"W1": ["home"]}}))
        assert uplink.sent[-1].data["state"] == "applied"

        trace.hold_tracks.clear()  # from now on every geofence-state write is stuck in the store's thread
        for i, x in enumerate((0, HALF + 100, HALF + 100, HALF + 100, HALF + 100)):
            clock.advance(10)
            lat, lon = latlon(x, 0)
            os.write(master, encode_position("8800000001", ts=clock.time(), lat=lat, lon=lon))
            await until(frames_seen(gw, i + 1))
        # the loop went on reading frames and raised the alarm while the first state write was stuck
        await until(lambda: "geofence_exit" in uplink.kinds())
        assert trace.held.is_set() and core.store.track_writes == 0
        trace.hold_tracks.set()
        assert await core.store.flush()

        # order: each state row was written only after the message that state change caused was queued
        state_sent = trace.index("uplink", lambda k: k == "geofence_state")
        exit_sent = trace.index("uplink", lambda k: k == "geofence_exit")
        assert state_sent < trace.index("sql", lambda s: "INTO fence_track" in s and "'inside'" in s)
        assert exit_sent < trace.index("sql", lambda s: "INTO fence_track" in s and "'outside'" in s)

    # not one SQLite statement (open, check, migrate, loads, command docs, state) ran on the loop thread
    assert trace.sql_threads, "the trace saw no SQLite at all"
    assert [sql for thread, sql in trace.sql_threads if thread == trace.loop_thread] == []
    # and the state reached the file (read with an untraced connection)
    with contextlib.closing(trace.real_connect(tmp_path / "state" / "wearables.db")) as db:
        assert db.execute("SELECT wearer, fence, state FROM fence_track").fetchall() == [("W1", "home", "outside")]


async def test_a_failed_state_write_is_kept_and_written_with_the_next_change(tmp_path: Path) -> None:
    """A real SQLite refusal (query_only): logged, the changes stay queued, the next write takes them along."""
    from agent.wearables.geofence import FenceState, Track
    from agent.wearables.store import WearablesStore

    store = await WearablesStore(tmp_path / "wearables.db").open()
    try:
        await store.db.execute("PRAGMA query_only = ON")
        store.queue_tracks([(("W1", "home"), Track("W1", "home", "fp", FenceState.OUTSIDE, True, 1.0))])
        assert not await store.flush()
        assert store.write_failures == 1 and store.unsaved == 1
        await store.db.execute("PRAGMA query_only = OFF")
        store.queue_tracks([(("W2", "home"), Track("W2", "home", "fp", FenceState.INSIDE, True, 2.0))])
        assert await store.flush() and store.unsaved == 0
        assert sorted((t.wearer, t.state) for t in await store.load_tracks()) == [
            ("W1", FenceState.OUTSIDE), ("W2", FenceState.INSIDE)]
        store.queue_tracks([(("W1", "home"), None)])  # a dropped fence deletes its row
        assert await store.flush()
        assert [t.wearer for t in await store.load_tracks()] == ["W2"]
    finally:
        await store.close()
