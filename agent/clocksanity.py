"""Is the wall clock plausibly right? A Pi has no RTC: until NTP answers it boots at the last saved time
(systemd-timesyncd's clock file) or in 1970. Envelopes carry wall-clock `ts`, so the agent must say when
it is stamping times it cannot vouch for instead of doing it silently.

`assess()` is pure: it takes the time, a floor below which the clock is certainly wrong, and what the
kernel says about NTP discipline (`read_kernel()`, adjtimex(2), the same source `timedatectl` shows as
"System clock synchronized"), and returns a verdict with the offset where one is known.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import OffsetClock, SystemClock

# No box can truthfully be earlier than this: the project did not exist before it.
EPOCH_FLOOR = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
# systemd-timesyncd touches this file at every sync; its mtime is a time the clock has certainly reached.
TIMESYNC_CLOCK_FILE = Path("/var/lib/systemd/timesync/clock")

_TIME_ERROR = 5  # adjtimex return value: clock not synchronised
_STA_UNSYNC = 0x0040
_STA_NANO = 0x2000


@dataclass(frozen=True, slots=True)
class KernelSync:
    """What adjtimex(2) reports: whether NTP disciplines the clock, and its error estimates."""

    synchronised: bool
    offset_s: float  # the correction the kernel is still slewing in (NTP's last measured offset)
    esterror_s: float
    maxerror_s: float


@dataclass(frozen=True, slots=True)
class ClockVerdict:
    plausible: bool  # False: the wall clock is certainly wrong (before the floor)
    synchronised: bool | None  # None: unknown (no kernel information)
    offset_s: float | None  # how far the wall clock is off, when known (negative: behind)
    reason: str

    @property
    def trustworthy(self) -> bool:
        return self.plausible and self.synchronised is not False


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def assess(now: float, *, floor_ts: float = EPOCH_FLOOR, kernel: KernelSync | None = None) -> ClockVerdict:
    """Judge wall-clock time `now` (epoch s). Pure: no I/O."""
    if now < floor_ts:
        return ClockVerdict(
            plausible=False, synchronised=False, offset_s=now - floor_ts,
            reason=f"wall clock {_iso(now)} is before {_iso(floor_ts)}: never set since boot "
                   f"(at least {floor_ts - now:.0f} s behind)")
    if kernel is None:
        return ClockVerdict(True, None, None, "plausible; NTP status unknown")
    if kernel.synchronised:
        return ClockVerdict(
            True, True, kernel.offset_s,
            f"NTP-synchronised (offset {kernel.offset_s * 1000:+.1f} ms, est. error {kernel.esterror_s * 1000:.1f} ms)")
    return ClockVerdict(True, False, None, "not NTP-synchronised; plausible but may be off by any amount")


def known_floor(build_ts: float | None = None, timesync_file: Path = TIMESYNC_CLOCK_FILE) -> float:
    """The latest time the clock has certainly reached: the project floor, the build, the last NTP sync."""
    floor = EPOCH_FLOOR
    if build_ts is not None:
        floor = max(floor, build_ts)
    try:
        floor = max(floor, timesync_file.stat().st_mtime)
    except OSError:
        pass
    return floor


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (the classic ABI glibc's adjtimex symbol uses on 32 and 64 bit)
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


@functools.cache
def _libc() -> Any:
    """libc, loaded once (find_library runs ldconfig: about 1.5 ms, too slow for every command)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def read_kernel() -> KernelSync | None:
    """adjtimex(2) with modes=0 (read only; needs no privilege). None where it is unavailable."""
    libc = _libc()
    if libc is None:
        return None
    try:
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    unit = 1e-9 if tx.status & _STA_NANO else 1e-6
    return KernelSync(
        synchronised=state != _TIME_ERROR and not tx.status & _STA_UNSYNC,
        offset_s=tx.offset * unit, esterror_s=tx.esterror * 1e-6, maxerror_s=tx.maxerror * 1e-6)


def _unknown() -> KernelSync | None:
    return None


def _offset_unsynchronised() -> KernelSync | None:
    return KernelSync(synchronised=False, offset_s=0.0, esterror_s=0.0, maxerror_s=0.0)


def kernel_reader(clock: object) -> Callable[[], KernelSync | None]:
    """Where to read what the kernel says about `clock`'s NTP discipline (agent.commands trusts a
    synchronised clock, see docs/commands-and-keys.md "Clock policy").

    adjtimex describes the system clock only: for SystemClock it is read each time; the simulator's
    OffsetClock is a box clock that is off by construction, so it is never synchronised (unless the
    offset is 0); any other clock (a test's ManualClock) has no kernel verdict (None) unless one is
    injected."""
    if isinstance(clock, SystemClock):
        return read_kernel
    if isinstance(clock, OffsetClock):
        return read_kernel if clock.offset_s == 0 else _offset_unsynchronised
    return _unknown


def check_now(now: float, build_ts: float | None = None) -> ClockVerdict:
    """The verdict for this machine now: the one call the agent makes (at start and in each heartbeat)."""
    return assess(now, floor_ts=known_floor(build_ts), kernel=read_kernel())
