"""A simulated day of one village's uplink, as the box's own code shapes it (issue 14).

50 wearers each reporting a position every 5 minutes (agent.wearables.episodes.pos_of's shape), 20 cameras
probed by the camera feature (a `cameras` telemetry every telemetry_s, a few `camera` events), a heartbeat
every heartbeat_s (agent.heartbeat's shape), one broadcast (its receipts) and one SOS. Deterministic for
a seed. bench/data_budget.py sends it through the real outbox and link; agent/protocol/batchdict.py's
dictionary was made from a day of another seed (`python -m bench.village_day --dict`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.protocol.envelope import MsgClass

DAY_MS = 86_400_000
T0 = 1_764_547_200_000  # 2025-12-01 00:00 UTC
STATES = ("online", "degraded", "offline", "unknown", "maintenance")


@dataclass(frozen=True, slots=True)
class Msg:
    at_ms: int  # offset in the day
    cls: MsgClass
    kind: str
    data: dict[str, Any]


def day(seed: int = 1, *, wearers: int = 50, cameras: int = 20, position_s: int = 300, heartbeat_s: int = 300,
        camera_telemetry_s: int = 900, t0: int = T0) -> Iterator[Msg]:
    rng = random.Random(seed)
    out: list[Msg] = []
    home = [(30.27 + rng.uniform(-0.01, 0.01), 120.15 + rng.uniform(-0.01, 0.01)) for _ in range(wearers)]
    phase = [rng.randint(0, position_s * 1000 - 1) for _ in range(wearers)]
    for i in range(wearers):
        lat, lon = home[i]
        for k in range(DAY_MS // (position_s * 1000)):
            at = k * position_s * 1000 + phase[i]
            lat += rng.uniform(-2e-4, 2e-4)
            lon += rng.uniform(-2e-4, 2e-4)
            ts = t0 + at
            out.append(Msg(at, MsgClass.TELEMETRY, "position", {
                "wearer": f"w-{i:03d}", "device": f"band-{i:03d}",
                "pos": {"lat": round(lat, 7), "lon": round(lon, 7), "fix_ts": ts - rng.randint(200, 4000),
                        "acc_m": round(rng.uniform(2.5, 15.0), 1), "source": "gnss"}}))
    cams = [f"cam-{i:02d}" for i in range(cameras)]
    for k in range(1, DAY_MS // (camera_telemetry_s * 1000) + 1):
        at = k * camera_telemetry_s * 1000
        entries = []
        for c in cams:
            entry: dict[str, Any] = {"camera": c, "state": "online", "reason": None, "since": t0 - 3_600_000,
                                     "seconds": {"online": float(camera_telemetry_s), "degraded": 0.0,
                                                 "offline": 0.0, "unknown": 0.0, "maintenance": 0.0}}
            if rng.random() < 0.7:
                entry["clock_skew_s"] = round(rng.uniform(-2, 2), 1)
            entry["latency_ms"] = round(rng.uniform(20, 400), 1)
            entries.append(entry)
        summary = dict.fromkeys(STATES, 0) | {"online": cameras, "total": cameras}
        out.append(Msg(at, MsgClass.TELEMETRY, "cameras", {"from": t0 + at - camera_telemetry_s * 1000,
                                                           "to": t0 + at, "summary": summary, "cameras": entries}))
    for _ in range(3):  # a camera drops and comes back a few times a day
        at, c = rng.randint(0, DAY_MS - 600_000), rng.choice(cams)
        out.append(Msg(at, MsgClass.EVENT, "camera", {"camera": c, "state": "offline", "reason": "timeout",
                                                       "since": t0 + at, "previous": "online",
                                                       "failing_since": t0 + at - 120_000}))
        out.append(Msg(at + 300_000, MsgClass.EVENT, "camera", {"camera": c, "state": "online", "reason": None,
                                                                 "since": t0 + at + 300_000, "previous": "offline"}))
    up = 0
    for k in range(DAY_MS // (heartbeat_s * 1000)):
        at = k * heartbeat_s * 1000 + 500
        up = at // 1000
        out.append(Msg(at, MsgClass.TELEMETRY, "heartbeat", heartbeat_data(up, rng)))
    bc = 9 * 3_600_000 + 123
    for state, dt in (("received", 0), ("scheduled", 200), ("started", 60_000), ("finished", 240_000)):
        out.append(Msg(bc + dt, MsgClass.RECEIPT, "cmd", {"cmd": "bc-20251201-0900-township", "state": state}))
    out.sort(key=lambda m: m.at_ms)
    yield from out


def heartbeat_data(uptime_s: int, rng: random.Random) -> dict[str, Any]:
    classes = ("alarm", "receipt", "event", "telemetry")
    return {
        "uptime_s": uptime_s,
        "outbox": {"depth": dict.fromkeys(classes, 0) | {"telemetry": rng.randint(0, 60)},
                   "oldest_ts": dict.fromkeys(classes, None), "bytes": rng.randint(0, 16000),
                   "counters": {}},
        "disk_free_mb": 11_800 - uptime_s // 7200, "version": "0.1.0",
        "clock": {"plausible": True, "synchronised": True, "offset_s": round(rng.uniform(-0.05, 0.05), 3),
                  "reason": "NTP synchronised"},
        "link": {"state": "connected", "connects": 1, "refused": 0, "qos0_refused": 0},
        "usage": {"day": "2025-12-01", "month": "2025-12", "sent_day": 300 * uptime_s, "received_day": 90 * uptime_s,
                  "sent_month": 9_000_000 + 300 * uptime_s, "received_month": 2_700_000 + 90 * uptime_s,
                  "thinned_month": 0, "measured": True, "budget_month": None, "thinning": False},
    }


def make_dictionary(seed: int = 99, positions: int = 60) -> bytes:
    """The preset dictionary of batch format 1 (agent/protocol/batchdict.py): real envelopes of a day of
    another seed than the bench's, rarest first (DEFLATE codes a near match more cheaply): two events, one
    `cameras` telemetry, two heartbeats, then `positions` positions. Measured in docs/data-budget.md."""
    from agent.protocol.envelope import Envelope

    msgs = list(day(seed))
    bodies = {id(m): Envelope("village-000", n, T0 + m.at_ms, m.cls, m.kind, m.data).encode()
              for n, m in enumerate(msgs, 1)}
    def pick(kind: str, n: int) -> list[bytes]:
        return [bodies[id(m)] for m in msgs if m.kind == kind][:n]
    return b"".join(pick("camera", 2) + pick("cameras", 1) + pick("heartbeat", 2) + pick("position", positions))


if __name__ == "__main__":
    import sys

    if "--dict" in sys.argv:  # how agent/protocol/batchdict.py was written (once: a shipped dictionary is frozen)
        d = make_dictionary()
        head = ('"""The preset DEFLATE dictionary of uplink batch format 1, id 1 (agent/protocol/batch.py).\n\n'
                'FROZEN: boxes in the field compress with it; a county decodes with it forever. Written\n'
                'once by `python -m bench.village_day --dict`; a better one gets a new id.\n"""\n\n'
                'DICT_V1 = (\n')
        sys.stdout.write(head)
        for i in range(0, len(d), 100):
            sys.stdout.write(f"    {d[i:i + 100]!r}\n")
        sys.stdout.write(")\n")
