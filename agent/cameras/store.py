"""What the camera feature remembers across restarts: a small JSON file in the state directory.

It holds, per camera, the last reported state and the last device information (serial, firmware,
uptime), plus `reported_until` (end of the last `cameras` telemetry period) and `saved_at` (the
last moment the agent was watching). On start, the time between `reported_until` and now is
accounted as `unknown` and every camera is announced `unknown` since `saved_at`: the county never
gets time the agent did not see counted as online or offline.

Written atomically (agent.fsutil.write_atomic: temp file, fsync, rename, directory fsync) and only on a
state change, a device change, a telemetry period and at shutdown, to spare the SD card.

The service never touches the file on the event loop (an fsync on an SD card takes 10-100 ms, which
would stall PUBACKs, the broadcast loop and the watchdog): it loads in a thread, and `SnapshotWriter`
writes in a thread, one write at a time and in order; snapshots asked for while a write is running are
coalesced into the newest, so an older snapshot never overwrites a newer one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.fsutil import write_atomic

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(slots=True)
class DeviceRecord:
    serial: str = ""
    firmware: str = ""
    model: str = ""
    uptime_s: float | None = None
    seen_at: float = 0.0  # wall clock when read


@dataclass(slots=True)
class CameraRecord:
    state: str = "unknown"
    reason: str = ""
    since: float = 0.0
    device: DeviceRecord | None = None


@dataclass(slots=True)
class Snapshot:
    reported_until: float | None = None
    saved_at: float | None = None
    cameras: dict[str, CameraRecord] = field(default_factory=dict)


class StateStoreError(Exception):
    """The state file cannot be written (read problems only log: the agent starts fresh)."""


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Snapshot:
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return Snapshot()
        except (OSError, ValueError) as exc:
            log.warning("cameras: state file %s unreadable (%s); starting fresh", self.path, type(exc).__name__)
            return Snapshot()
        try:
            if raw.get("v") != FORMAT:
                raise ValueError(f"format {raw.get('v')!r}")
            cams = {}
            for cid, c in raw.get("cameras", {}).items():
                dev = c.get("device")
                cams[str(cid)] = CameraRecord(
                    state=str(c.get("state", "unknown")), reason=str(c.get("reason", "")),
                    since=float(c.get("since", 0.0)),
                    device=DeviceRecord(**dev) if isinstance(dev, dict) else None,
                )
            return Snapshot(_opt_float(raw.get("reported_until")), _opt_float(raw.get("saved_at")), cams)
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("cameras: state file %s not understood (%s); starting fresh", self.path, exc)
            return Snapshot()

    def save(self, snap: Snapshot) -> None:
        doc: dict[str, Any] = {
            "v": FORMAT,
            "reported_until": snap.reported_until,
            "saved_at": snap.saved_at,
            "cameras": {cid: asdict(rec) for cid, rec in snap.cameras.items()},
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode("utf-8"))
        except OSError as exc:
            raise StateStoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


class SnapshotWriter:
    """Writes a store's snapshots off the event loop: one at a time, in order, the newest pending one wins.

    `submit` (on the loop, never blocks) replaces the pending snapshot and starts the writer task if none
    runs; the task hands each snapshot to a thread. A refused write (StateStoreError: full disk, read-only
    card) is logged at ERROR and the next snapshot is written as usual, as when the service wrote inline.
    Any other exception ends the writer and is raised from the next `submit` or `flush`, so a bug still
    stops the service. The thread-side lock and sequence numbers keep the order even if the task is
    cancelled while its thread still writes: a later write waits for it, and an older one is skipped.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._pending: tuple[int, Snapshot] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None  # the write running in a thread
        self._submitted = 0
        self._written = 0  # the newest sequence number on disk (or refused); guarded by _lock
        self._lock = threading.Lock()

    def submit(self, snap: Snapshot) -> None:
        self._raise_if_died()
        self._submitted += 1
        self._pending = (self._submitted, snap)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="cameras.store.writer")

    async def flush(self) -> None:
        """Return once every snapshot submitted so far is written (or refused and logged)."""
        while True:
            running = {f for f in (self._task, self._inflight) if f is not None and not f.done()}
            if running:
                await asyncio.wait(running)  # never cancels the writer, even if flush is cancelled
                continue
            self._raise_if_died()
            if self._pending is None:
                return
            # the writer was cancelled with a snapshot left: write it now
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="cameras.store.writer")

    def _raise_if_died(self) -> None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            self._task = None
            raise exc

    async def _drain(self) -> None:
        while self._pending is not None:
            seq, snap = self._pending
            self._pending = None
            self._inflight = asyncio.get_running_loop().run_in_executor(None, self._write, seq, snap)
            await asyncio.shield(self._inflight)  # cancelling the writer leaves the write running

    def _write(self, seq: int, snap: Snapshot) -> None:
        with self._lock:
            if seq <= self._written:
                return  # a newer snapshot is already on disk
            self._written = seq  # also when refused: the next write carries everything anyway
            try:
                self.store.save(snap)
            except StateStoreError as exc:
                log.error("cameras: %s", exc)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


# ----------------------------------------------------------------------------- device changes

REBOOT_TOLERANCE_S = 120.0


def device_changes(prev: DeviceRecord | None, new: DeviceRecord, max_gap_s: float) -> list[dict[str, Any]]:
    """`camera_device` event bodies (without `camera`) for what changed between two readings.

    replaced: the serial number changed. rebooted: the uptime went back, or is shorter than the time
    since the last reading (only judged when that gap is sane: wall clocks on boxes without an RTC jump).
    firmware_changed: same serial, other firmware.
    """
    if prev is None:
        return []
    out: list[dict[str, Any]] = []
    if prev.serial and new.serial and prev.serial != new.serial:
        out.append({"change": "replaced", "old_serial": prev.serial, "serial": new.serial,
                    "model": new.model, "firmware": new.firmware})
        return out
    if prev.firmware and new.firmware and prev.firmware != new.firmware:
        out.append({"change": "firmware_changed", "old_firmware": prev.firmware, "firmware": new.firmware})
    if prev.uptime_s is not None and new.uptime_s is not None:
        gap = new.seen_at - prev.seen_at
        went_back = new.uptime_s + REBOOT_TOLERANCE_S < prev.uptime_s
        too_short = 0 <= gap <= max_gap_s and new.uptime_s + REBOOT_TOLERANCE_S < prev.uptime_s + gap
        if went_back or too_short:
            out.append({"change": "rebooted", "uptime_s": new.uptime_s,
                        "booted_at": int((new.seen_at - new.uptime_s) * 1000)})
    return out
