"""Fleet bench: the largest N boxes one local mosquitto and this machine sustain with county latency p99 <= 1 s.

Every box sends a heartbeat every 60 s and a position every 10 s (real periods, speed 1), as in the field.
N doubles from --start while the previous N passed: p99 <= --p99-ms, every PUBACKed message reached the
county, and every box was connected at the end. Each step runs --duration seconds after its connect ramp.
Prints one row per N and the verdict; bounded by --max-boxes and the steps' durations (a few minutes).

    .venv/bin/python -m bench.fleet [--start 1000] [--max-boxes 16000] [--duration 40]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
from pathlib import Path

from sim.broker import LocalBroker
from sim.fleet import FleetOptions, FleetResult, run_fleet


def passed(r: FleetResult, p99_ms: float) -> bool:
    return (r.p99_ms is not None and r.p99_ms <= p99_ms and r.connected == r.boxes and r.unique >= r.sent
            and r.queued_at_end <= r.boxes)  # at most about one message per box still on its way at the cut


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.fleet")
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--max-boxes", type=int, default=16000)
    ap.add_argument("--duration", type=float, default=40.0, help="seconds per step after the ramp")
    ap.add_argument("--p99-ms", type=float, default=1000.0)
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per box, here and in mosquitto
    if hard < 2 * args.max_boxes + 100:
        args.max_boxes = (hard - 100) // 2
        print(f"file descriptor limit {hard}: at most {args.max_boxes} boxes", file=sys.stderr)
    best = None
    n = args.start
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp), "mosquitto").start()
        try:
            print(f"{'boxes':>6} {'msg/s':>8} {'expected':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
                  f"{'max ms':>7} {'conn/s':>6} ok")
            while n <= args.max_boxes:
                ramp = max(1.0, n / 200)
                r = asyncio.run(run_fleet(FleetOptions(boxes=n, broker_url=broker.url,
                                                       duration_s=ramp + args.duration, ramp_s=ramp)))
                ok = passed(r, args.p99_ms)
                print(f"{n:>6} {r.msgs_per_s:>8.1f} {r.expected_per_s:>8.1f} {r.p50_ms or 0:>7.0f} "
                      f"{r.p95_ms or 0:>7.0f} {r.p99_ms or 0:>7.0f} {r.max_ms or 0:>7.0f} "
                      f"{r.max_connects_per_s:>6} {'yes' if ok else 'NO'}", flush=True)
                if not ok:
                    break
                best = n
                n *= 2
        finally:
            broker.stop()
    print(f"largest N sustained with p99 <= {args.p99_ms:.0f} ms: {best if best else 'none'}"
          + (f" (stopped at --max-boxes {args.max_boxes})" if best and best * 2 > args.max_boxes else ""))
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
