"""geofence.py: the per-wearer fence state machine over a ManualClock, and its persistence in SQLite."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.clock import ManualClock
from agent.wearables.fences import load_fences
from agent.wearables.geofence import FenceState, GeofenceRules, GeofenceTracker, Transition
from agent.wearables.store import WearablesStore
from drivers.wristband.events import Fix, FixSource
from tests.wearables_support import HALF, collection, gps, latlon, square

RULES = GeofenceRules(margin_m=25.0, exit_fixes=3, exit_s=30.0)
PERIOD_S = 10.0  # a band reporting every 10 s


def tracker(clock: ManualClock, *features: dict, assign: dict | None = None) -> GeofenceTracker:
    t = GeofenceTracker(RULES, clock)
    t.set_fences(load_fences(collection(*(features or (square(),)))), assign or {"W1": ["home"]})
    return t


def feed(t: GeofenceTracker, clock: ManualClock, fixes: list[Fix], wearer: str = "W1") -> list[Transition]:
    out = []
    for fix in fixes:
        clock.advance(PERIOD_S)
        out += t.update(wearer, fix)
    return out


def kinds(ts: list[Transition]) -> list[str]:
    return [f"{t.kind}:{t.track.state.value}" for t in ts]


def test_new_fence_reports_current_state_once_not_a_false_enter() -> None:
    clock = ManualClock()
    t = tracker(clock)
    out = feed(t, clock, [gps(0, 0)] * 5)
    assert kinds(out) == ["state:inside"]
    assert out[0].send


def test_new_fence_with_wearer_outside_reports_outside_once_after_confirmation() -> None:
    clock = ManualClock()
    t = tracker(clock)
    out = feed(t, clock, [gps(HALF + 100, 0)] * 6)
    assert kinds(out) == ["state:outside"]  # after 3 fixes over >= 30 s, not on the first jittery fix


@pytest.mark.parametrize("seed", range(25))
def test_walking_out_through_gps_jitter_gives_exactly_one_exit(seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    t = tracker(clock)
    fixes = []
    # from 100 m inside to 150 m outside the east edge at 1 m/s, a fix every 10 s, jitter sigma 8 m
    for step in range(26):
        x = HALF - 100 + step * 10
        fixes.append(gps(x + rng.gauss(0, 8), rng.gauss(0, 8), acc_m=rng.uniform(5, 15)))
    # then loiter 150 m out for ten minutes
    fixes += [gps(HALF + 150 + rng.gauss(0, 8), rng.gauss(0, 8)) for _ in range(60)]
    out = feed(t, clock, fixes)
    assert kinds(out) == ["state:inside", "exit:outside"]
    assert t.state("W1", "home") is FenceState.OUTSIDE


@pytest.mark.parametrize("seed", range(10))
def test_jitter_inside_near_the_line_never_exits(seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    t = tracker(clock)
    # standing 5 m inside the fence for about three hours with 8 m jitter: fixes often land outside
    fixes = [gps(HALF - 5 + rng.gauss(0, 8), rng.gauss(0, 8), acc_m=10) for _ in range(1000)]
    out = feed(t, clock, fixes)
    assert kinds(out) == ["state:inside"]


def test_exit_needs_n_fixes_and_t_seconds() -> None:
    clock = ManualClock()
    t = tracker(clock)
    feed(t, clock, [gps(0, 0)])
    out = []
    for _ in range(5):  # five fixes outside, but only 2 s apart: 8 s < 30 s
        clock.advance(2)
        out += t.update("W1", gps(HALF + 100, 0))
    assert out == []
    clock.advance(30)
    out += t.update("W1", gps(HALF + 100, 0))
    assert kinds(out) == ["exit:outside"]


def test_reported_accuracy_widens_the_margin() -> None:
    clock = ManualClock()
    t = tracker(clock)
    feed(t, clock, [gps(0, 0)])
    # 40 m out is beyond the 25 m margin, but the band says its fix is only good to 60 m
    assert feed(t, clock, [gps(HALF + 40, 0, acc_m=60)] * 10) == []
    assert kinds(feed(t, clock, [gps(HALF + 40, 0, acc_m=10)] * 4)) == ["exit:outside"]


def test_a_fix_in_the_margin_band_restarts_the_count() -> None:
    clock = ManualClock()
    t = tracker(clock)
    feed(t, clock, [gps(0, 0)])
    pattern = [gps(HALF + 60, 0), gps(HALF + 60, 0), gps(HALF + 10, 0)]  # never 3 in a row beyond the margin
    assert feed(t, clock, pattern * 10) == []


def test_enter_is_immediate() -> None:
    clock = ManualClock()
    t = tracker(clock)
    feed(t, clock, [gps(0, 0)] + [gps(HALF + 100, 0)] * 4)
    out = feed(t, clock, [gps(HALF - 1, 0)])
    assert kinds(out) == ["enter:inside"]
    assert out[0].send


def test_no_fix_zero_zero_lbs_and_wifi_never_change_state() -> None:
    clock = ManualClock()
    t = tracker(clock)
    feed(t, clock, [gps(0, 0)])
    far = latlon(HALF + 5000, 0)
    junk = [
        Fix(far[0], far[1], None, FixSource.LBS, 500.0),
        Fix(far[0], far[1], None, FixSource.WIFI, 80.0),
        Fix(far[0], far[1], None, FixSource.NONE),
        Fix(0.0, 0.0, None, FixSource.GPS, 5.0),  # the 0,0 placeholder some firmware marks valid
    ]
    assert feed(t, clock, junk * 20) == []
    assert t.state("W1", "home") is FenceState.INSIDE
    # and they do not break a run of real outside fixes either way: they are simply not looked at
    out = feed(t, clock, [gps(HALF + 100, 0), junk[0], gps(HALF + 100, 0), junk[3], gps(HALF + 100, 0)])
    assert kinds(out) == ["exit:outside"]


def test_only_assigned_fences_are_tested() -> None:
    clock = ManualClock()
    t = tracker(clock, square(), square(50.0, fid="yard"), assign={"W1": ["home"], "W2": ["yard"]})
    assert kinds(feed(t, clock, [gps(100, 0)] * 4, "W1")) == ["state:inside"]
    assert kinds(feed(t, clock, [gps(100, 0)] * 4, "W2")) == ["state:outside"]
    assert feed(t, clock, [gps(100, 0)] * 4, "W3") == []


def test_changed_shape_is_a_new_fence_and_reports_state_once() -> None:
    clock = ManualClock()
    t = tracker(clock)
    feed(t, clock, [gps(0, 0)])
    dropped = t.set_fences(load_fences(collection(square(100.0))), {"W1": ["home"]})
    assert dropped == [("W1", "home")]
    assert kinds(feed(t, clock, [gps(0, 0)])) == ["state:inside"]
    # same shape again (e.g. only the name changed): the state stays, nothing is reported
    assert t.set_fences(load_fences(collection(square(100.0, props={"name": "家"}))), {"W1": ["home"]}) == []
    assert feed(t, clock, [gps(0, 0)]) == []


def test_schedule_gates_notification_not_state() -> None:
    sh = ZoneInfo("Asia/Shanghai")
    clock = ManualClock(wall=datetime(2026, 11, 23, 12, 0, tzinfo=sh).timestamp())  # noon: window closed
    t = tracker(clock, square(props={"schedule": {"from": "22:00", "to": "06:00"}}))
    feed(t, clock, [gps(0, 0)])
    out = feed(t, clock, [gps(HALF + 100, 0)] * 4)
    assert kinds(out) == ["exit:outside"] and not out[0].send  # recorded, not sent
    assert t.state("W1", "home") is FenceState.OUTSIDE
    assert feed(t, clock, [gps(HALF + 100, 0)] * 3) == []
    # still out when the night window opens: the exit is sent then, once
    clock.set_wall(datetime(2026, 11, 23, 22, 5, tzinfo=sh).timestamp())
    out = feed(t, clock, [gps(HALF + 100, 0)] * 3)
    assert kinds(out) == ["exit:outside"] and out[0].send
    # back in: the county was told about the exit, so it hears about the enter
    out = feed(t, clock, [gps(0, 0)])
    assert kinds(out) == ["enter:inside"] and out[0].send


def test_enter_after_an_unsent_exit_is_not_sent() -> None:
    sh = ZoneInfo("Asia/Shanghai")
    clock = ManualClock(wall=datetime(2026, 11, 23, 12, 0, tzinfo=sh).timestamp())
    t = tracker(clock, square(props={"schedule": {"from": "22:00", "to": "06:00"}}))
    feed(t, clock, [gps(0, 0)] + [gps(HALF + 100, 0)] * 4)
    out = feed(t, clock, [gps(0, 0)])
    assert kinds(out) == ["enter:inside"] and not out[0].send


async def test_restart_keeps_state(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await WearablesStore(tmp_path / "wearables.db").open()
    t = tracker(clock)
    out = feed(t, clock, [gps(0, 0)] + [gps(HALF + 100, 0)] * 4)
    assert await store.save_tracks(tr.track for tr in out)
    await store.close()

    # a new process: same file, same fences
    store = await WearablesStore(tmp_path / "wearables.db").open()
    t2 = GeofenceTracker(RULES, clock)
    t2.load(await store.load_tracks())
    assert t2.set_fences(load_fences(collection(square())), {"W1": ["home"]}) == []
    assert t2.state("W1", "home") is FenceState.OUTSIDE
    # still outside: no state report, no second exit; coming back is an enter, not a "new fence" report
    assert feed(t2, clock, [gps(HALF + 100, 0)] * 5) == []
    assert kinds(feed(t2, clock, [gps(0, 0)])) == ["enter:inside"]
    await store.close()


async def test_store_moves_a_damaged_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "wearables.db"
    path.write_bytes(b"this is not a database" * 100)
    store = await WearablesStore(path).open()
    assert await store.load_tracks() == []
    assert list(tmp_path.glob("wearables.db.corrupt-*"))
    await store.close()
