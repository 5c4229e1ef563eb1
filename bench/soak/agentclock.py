"""Run `village` with a steppable wall clock: `python -m bench.soak.agentclock OFFSET_FILE agent run -c FILE`.

The agent reads wall time only through `time.time()` (agent.clock.SystemClock) and `time.time_ns()`; this
launcher wraps both to add the offset (seconds, a float) written in OFFSET_FILE, re-read at most every
0.2 s, then hands over to `agent.cli.main`. Monotonic time is untouched, as on a box whose NTP or RTC steps
the clock. The soak's fault driver writes the file to step the clock forward and back.

Why not libfaketime: with monotonic time left real (FAKETIME_DONT_FAKE_MONOTONIC=1), libfaketime 0.9.10
breaks Python's time.sleep (clock_nanosleep returns EINVAL), which paho's thread uses; faking monotonic
too would make the step jump every timer, which a real clock step does not do. What this does not cover:
wall time read in C (datetime.now(), SQLite's own clock, subprocesses such as ffmpeg).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REREAD_S = 0.2


def install(offset_file: Path) -> None:
    real_time, real_time_ns, mono = time.time, time.time_ns, time.monotonic
    state = {"offset": 0.0, "read_at": -1e9}

    def offset() -> float:
        now = mono()
        if now - state["read_at"] >= REREAD_S:
            state["read_at"] = now
            try:
                state["offset"] = float(offset_file.read_text().strip() or 0)
            except (OSError, ValueError):
                state["offset"] = 0.0
        return state["offset"]

    time.time = lambda: real_time() + offset()  # type: ignore[assignment]
    time.time_ns = lambda: real_time_ns() + int(offset() * 1e9)  # type: ignore[assignment]


def main() -> int:
    install(Path(sys.argv[1]))
    from agent.cli import main as village

    return village(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
