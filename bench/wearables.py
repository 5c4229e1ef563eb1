"""Geofence throughput: fixes/s for 500 wearers x 20 fences on one core (goal >= 20,000 fixes/s).

    .venv/bin/python bench/wearables.py [--wearers 500] [--fences 20] [--fixes 200000] [--seed 1]

Prints figures, not pass/fail. Three runs over the same pre-generated fixes, all in this process:
- tracker: GeofenceTracker.update alone, every wearer assigned every fence (the worst case);
- engine: WearablesEngine.on_event (registry, episodes, position thinning, geofences), no I/O;
- baseline: shapely prepared polygons doing only the inside/distance test, for a ratio.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.clock import ManualClock
from agent.wearables.engine import WearablesEngine
from agent.wearables.fences import Fence, load_fences
from agent.wearables.geo import LocalFrame
from agent.wearables.geofence import GeofenceRules, GeofenceTracker
from agent.wearables.settings import GatewayConfig, WearablesConfig, WearerConfig
from drivers.wristband.events import BandReport, Fix, FixSource

LAT0, LON0 = 22.0, 100.8
FRAME = LocalFrame.around(LAT0, LON0)


def village_fences(n: int, rng: random.Random) -> dict:
    """n irregular 12-gons (radius 150-400 m) on a grid over about 2 km x 2 km; a few circles."""
    side = math.ceil(math.sqrt(n))
    features = []
    for i in range(n):
        cx, cy = (i % side - side / 2) * 500.0, (i // side - side / 2) * 500.0
        if i % 5 == 4:
            lat, lon = FRAME.lat_lon(cx, cy)
            features.append({"type": "Feature", "id": f"f{i}", "properties": {"radius_m": rng.uniform(100, 300)},
                             "geometry": {"type": "Point", "coordinates": [lon, lat]}})
            continue
        ring = []
        for k in range(12):
            a = 2 * math.pi * k / 12
            r = rng.uniform(150, 400)
            lat, lon = FRAME.lat_lon(cx + r * math.cos(a), cy + r * math.sin(a))
            ring.append([lon, lat])
        ring.append(ring[0])
        features.append({"type": "Feature", "id": f"f{i}", "properties": {},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": features}


def make_fixes(wearers: int, count: int, rng: random.Random) -> list[tuple[str, Fix]]:
    homes = [(rng.uniform(-1200, 1200), rng.uniform(-1200, 1200)) for _ in range(wearers)]
    out = []
    for i in range(count):
        w = i % wearers
        x, y = homes[w]
        lat, lon = FRAME.lat_lon(x + rng.gauss(0, 30), y + rng.gauss(0, 30))
        out.append((f"W{w}", Fix(lat, lon, None, FixSource.GPS, rng.uniform(3, 20))))
    return out


def bench_tracker(fences: dict[str, Fence], fixes: list[tuple[str, Fix]], wearers: int) -> float:
    clock = ManualClock()
    t = GeofenceTracker(GeofenceRules(), clock)
    t.set_fences(fences, {f"W{i}": list(fences) for i in range(wearers)})
    start = time.perf_counter()
    for wearer, fix in fixes:
        clock.advance(0.01)  # the bench drives time by hand, as the tests do
        t.update(wearer, fix)
    return len(fixes) / (time.perf_counter() - start)


def bench_engine(fences: dict[str, Fence], fixes: list[tuple[str, Fix]], wearers: int) -> float:
    clock = ManualClock()
    cfg = WearablesConfig()
    e = WearablesEngine(cfg, [GatewayConfig(id="gw1", url="/dev/null", codec="watch")],
                        [WearerConfig(f"W{i}", f"{8800000000 + i}", fences=tuple(fences)) for i in range(wearers)],
                        clock)
    e.set_local_fences(fences)
    reports = [BandReport(str(8800000000 + int(w[1:])), fix, battery_pct=80, kind="UD") for w, fix in fixes]
    start = time.perf_counter()
    for r in reports:
        clock.advance(0.01)
        e.on_event("gw1", r)
    return len(reports) / (time.perf_counter() - start)


def bench_shapely(doc: dict, fixes: list[tuple[str, Fix]]) -> float | None:
    try:
        import shapely
        from shapely.geometry import Point, shape
    except ImportError:
        return None
    shapes = []
    for f in doc["features"]:
        g = f["geometry"]
        if g["type"] == "Point":
            x, y = FRAME.xy(g["coordinates"][1], g["coordinates"][0])
            s = Point(x, y).buffer(f["properties"]["radius_m"], 32)
        else:
            ring = [FRAME.xy(lat, lon) for lon, lat in g["coordinates"][0]]
            s = shape({"type": "Polygon", "coordinates": [ring]})
        shapely.prepare(s)
        shapes.append(s)
    start = time.perf_counter()
    for _, fix in fixes:
        p = Point(FRAME.xy(fix.lat, fix.lon))
        for s in shapes:
            if not s.contains(p):
                s.exterior.distance(p)
    return len(fixes) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wearers", type=int, default=500)
    ap.add_argument("--fences", type=int, default=20)
    ap.add_argument("--fixes", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    doc = village_fences(args.fences, rng)
    fences = load_fences(doc)
    fixes = make_fixes(args.wearers, args.fixes, rng)
    print(f"{args.wearers} wearers x {len(fences)} fences (all assigned to everyone), {len(fixes)} fixes, one core")
    tracker = bench_tracker(fences, fixes, args.wearers)
    print(f"  geofence tracker : {tracker:10,.0f} fixes/s   ({tracker * len(fences):,.0f} fence tests/s)"
          f"   goal >= 20,000: {'met' if tracker >= 20_000 else 'NOT met'}")
    engine = bench_engine(fences, fixes, args.wearers)
    print(f"  whole engine     : {engine:10,.0f} fixes/s   (registry + episodes + positions + geofences)")
    base = bench_shapely(doc, fixes[: max(1, len(fixes) // 10)])
    if base is None:
        print("  shapely baseline : not installed")
    else:
        print(f"  shapely baseline : {base:10,.0f} fixes/s   (prepared contains + distance; tracker is "
              f"{tracker / base:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
