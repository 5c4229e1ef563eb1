"""Injected time. Pure decision code takes a Clock; tests drive a ManualClock and never sleep."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall clock, epoch seconds (UTC). May jump: boxes without an RTC boot in 1970."""
        ...

    def monotonic(self) -> float:
        """Seconds that only move forward; use for intervals and timeouts."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to: `advance(s)` moves both, `set_wall(t)` steps the wall clock."""

    def __init__(self, wall: float = 1_763_900_000.0, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("monotonic time cannot go back")
        self._wall += seconds
        self._mono += seconds

    def set_wall(self, wall: float) -> None:
        self._wall = wall


def now_ms(clock: Clock) -> int:
    return int(clock.time() * 1000)


class OffsetClock:
    """The system clock with the wall clock `offset_s` off (the monotonic clock untouched).

    Only for the simulator: a box whose RTC drifted or booted in the past, without faketime. The composition
    root builds one only for profile kind "sim" (agent.hardware.build_clock).
    """

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def time(self) -> float:
        return time.time() + self.offset_s

    def monotonic(self) -> float:
        return time.monotonic()
