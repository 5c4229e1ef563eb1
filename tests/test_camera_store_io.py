"""The camera service never touches its files on the event loop (issue 11 item 6).

An fsync of the state file on an SD card takes 10-100 ms; on the loop it stalls PUBACKs, the broadcast
loop and the watchdog. The store here is the real StateStore on a real directory, with a seam that
records which thread each load/save runs on and can hold a save on a threading.Event (a slow card).
A save on the loop thread is recorded and never held (holding it would deadlock the test instead of
failing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cameras.store import Snapshot, SnapshotWriter, StateStore
from agent.clock import ManualClock
from tests.test_camera_service import CYCLE, Rig

HOLD_S = 30.0  # a safety net only: every held save is released by the test long before this


class SeamStore(StateStore):
    """The real store, recording the thread of every file access and optionally holding saves."""

    def __init__(self, path: Path, loop_thread: int) -> None:
        super().__init__(path)
        self.loop_thread = loop_thread
        self.threads: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a save has started
        self.done: list[Snapshot] = []  # snapshots written, in the order they reached the disk

    def on_loop(self) -> list[str]:
        return [op for op, ident in self.threads if ident == self.loop_thread]

    def load(self) -> Snapshot:
        self.threads.append(("load", threading.get_ident()))
        return super().load()

    def save(self, snap: Snapshot) -> None:
        self.threads.append(("save", threading.get_ident()))
        self.entered.set()
        if threading.get_ident() != self.loop_thread:
            self.gate.wait(HOLD_S)
        super().save(snap)
        self.done.append(snap)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, ManualClock())
    try:
        yield r
    finally:
        await r.close()


def seam(rig: Rig) -> SeamStore:
    return SeamStore(rig.state_path, threading.get_ident())


async def test_no_state_file_access_runs_on_the_event_loop(rig):
    _, cfg = await rig.camera("c1")
    store = seam(rig)
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps({"v": 1, "reported_until": rig.clock.time() - 60,
                                      "saved_at": rig.clock.time() - 30, "cameras": {}}))
    svc = rig.service([cfg], store=store, interval_s=0.05)
    ready = asyncio.Event()
    task = asyncio.create_task(svc.run(ready.set), name="test.cameras")
    await asyncio.wait_for(ready.wait(), 10)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_S
    while svc.cycles < 2:  # two good cycles: online, a state change that saves
        assert loop.time() < deadline, "the service stopped cycling"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # run()'s finally saves and waits for the disk
    rig.clock.advance(CYCLE)
    await svc.report()
    await svc.flush()
    assert store.on_loop() == []
    ops = [op for op, _ in store.threads]
    assert ops[0] == "load" and "save" in ops
    assert rig.uplink.states("c1")[0] == ("unknown", "agent_down")  # the loaded file was used
    on_disk = json.loads(store.path.read_text())
    assert on_disk["saved_at"] == rig.clock.time() and on_disk["cameras"]["c1"]["state"] == "online"


async def test_a_slow_save_does_not_hold_cycles_or_reports_and_saves_land_in_order(rig):
    _, cfg = await rig.camera("c1")
    store = seam(rig)
    store.gate.clear()  # the card stalls: the first save does not finish until the test says so
    svc = rig.service([cfg], store=store)
    try:
        await svc.start()
        assert await asyncio.to_thread(store.entered.wait, HOLD_S)
        await rig.cycles(svc, 2)
        assert rig.uplink.states("c1") == [("unknown", "agent_start"), ("online", None)]
        rig.clock.advance(30)
        data = await svc.report()
        assert [k for _, k, _, _ in rig.uplink.sent].count("cameras") == 1
        assert store.done == []  # all of that went out while the first save was still held
        assert store.on_loop() == []
        assert [op for op, _ in store.threads].count("save") == 1  # the others wait, coalesced
    finally:
        store.gate.set()
    await svc.flush()
    assert store.on_loop() == []
    first, last = store.done  # the start's snapshot, then only the newest: an older never overwrites it
    assert first.cameras["c1"].state == "unknown"
    assert first.saved_at is not None and last.saved_at is not None and first.saved_at < last.saved_at
    assert last.cameras["c1"].state == "online" and last.reported_until == data["to"] / 1000
    on_disk = StateStore(store.path).load()
    assert on_disk.cameras["c1"].state == "online" and on_disk.reported_until == last.reported_until


async def test_a_refused_save_is_logged_and_the_next_one_writes_the_newest_state(rig, caplog):
    _, cfg = await rig.camera("c1")
    store = seam(rig)
    store.path.parent.parent.mkdir(parents=True, exist_ok=True)
    store.path.parent.write_text("not a directory")  # every write fails with an OSError, as on a full card
    svc = rig.service([cfg], store=store)
    with caplog.at_level(logging.ERROR, logger="agent.cameras"):
        await svc.start()
        await rig.cycles(svc, 2)
        await svc.flush()
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "cannot write" in r.getMessage()]
    assert refused and str(store.path) in refused[0].getMessage()
    assert rig.uplink.states("c1")[-1] == ("online", None)  # the service went on
    store.path.parent.unlink()  # space again
    rig.clock.advance(CYCLE)
    await svc.report()
    await svc.flush()
    assert store.on_loop() == []
    assert StateStore(store.path).load().cameras["c1"].state == "online"


async def test_a_cancelled_writer_never_lets_an_older_snapshot_win(tmp_path):
    store = SeamStore(tmp_path / "cameras.json", threading.get_ident())
    store.gate.clear()
    writer = SnapshotWriter(store)
    writer.submit(Snapshot(1.0, 1.0))
    assert await asyncio.to_thread(store.entered.wait, HOLD_S)
    assert writer._task is not None
    writer._task.cancel()  # e.g. the loop shutting down; the thread still writes snapshot 1
    with contextlib.suppress(asyncio.CancelledError):
        await writer._task
    writer.submit(Snapshot(2.0, 2.0))  # a new writer starts while the old write is still running
    store.gate.set()
    await writer.flush()
    assert [s.saved_at for s in store.done] == [1.0, 2.0]
    assert StateStore(store.path).load().saved_at == 2.0


async def test_the_credentials_file_is_not_read_on_the_event_loop(rig, tmp_path):
    """A credentials file whose read blocks (a FIFO without a writer: a stalled card) holds no one else."""
    cam, cfg = await rig.camera("c1")
    fifo = tmp_path / "c1.fifo"
    os.mkfifo(fifo, 0o600)
    cfg = type(cfg)(id=cfg.id, rtsp=cfg.rtsp, credentials=fifo, frame_check=False)
    svc = rig.service([cfg])
    await svc.start()
    released = threading.Event()

    def release() -> None:  # the safety net if the read blocks the loop thread (today's code)
        if not released.is_set():
            released.set()
            with open(fifo, "w") as f:
                f.write(f"admin:{cam.password}\n")

    net = threading.Timer(HOLD_S, release)
    net.start()
    rig.clock.advance(CYCLE)
    cycle = asyncio.create_task(svc.run_cycle(), name="test.cycle")
    try:
        fd = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_S * 2
        while fd is None:  # the read has started once a reader holds the FIFO open
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                assert not released.is_set(), "the credentials read blocked the event loop"
                assert loop.time() < deadline, "the credentials read never started"
                await asyncio.sleep(0.01)
        assert not released.is_set()  # the loop ran while the read was pending
        await svc.report()  # and reports go out meanwhile
        assert not cycle.done()
        released.set()
        os.write(fd, f"admin:{cam.password}\n".encode())
        os.close(fd)
        await asyncio.wait_for(cycle, HOLD_S)
    finally:
        net.cancel()
        if not released.is_set():  # the test failed midway: free a reader still blocked, if any
            released.set()
            with contextlib.suppress(OSError):
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
        if not cycle.done():
            cycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cycle
    assert cam.password_attempts == 1  # the probe used what the file held
