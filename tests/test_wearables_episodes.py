"""episodes.py through engine.py: alarm folding, lost contact, gateway silence, battery, position thinning."""

from __future__ import annotations

import pytest

from agent.clock import ManualClock
from agent.protocol.envelope import MsgClass
from agent.wearables.engine import WearablesEngine
from agent.wearables.episodes import Out
from agent.wearables.fences import load_fences
from agent.wearables.registry import Registry, RegistryError, Wearer, normalize_device, parse_wearers
from agent.wearables.settings import GatewayConfig, WearablesConfig, WearerConfig
from drivers.wristband.events import BandAlarm, GatewayHeartbeat
from tests.wearables_support import HALF, collection, gps, report, square

CFG = WearablesConfig(report_interval_s=60.0, lost_contact_factor=3.0, sos_fold_s=120.0)
BANDS = [WearerConfig(f"W{i}", f"880000000{i}") for i in range(1, 6)]


def engine(clock: ManualClock, cfg: WearablesConfig = CFG, silent_s: float = 300.0) -> WearablesEngine:
    return WearablesEngine(cfg, [GatewayConfig(id="gw1", url="/dev/null", codec="watch", silent_s=silent_s)],
                           BANDS, clock)


def kinds(out: list[Out]) -> list[str]:
    return [o.kind for o in out]


def run(e: WearablesEngine, clock: ManualClock, seconds: float, *, talking: tuple[str, ...] = (), every: float = 10,
        fix_at: tuple[float, float] = (0.0, 0.0)) -> list[Out]:
    """Advance `seconds` in steps of `every`: the listed devices report, the monitor ticks each step."""
    out: list[Out] = []
    for _ in range(int(seconds / every)):
        clock.advance(every)
        for dev in talking:
            out += e.on_event("gw1", report(dev, gps(*fix_at)))
        out += e.tick()
    return out


def all_devices() -> tuple[str, ...]:
    return tuple(w.device for w in BANDS)


def test_sos_goes_out_at_once_with_the_frame_position() -> None:
    clock = ManualClock()
    e = engine(clock)
    out = e.on_event("gw1", report("8800000001", gps(10, 20), BandAlarm.SOS, raw=b"[3G*8800000001*0002*AL,x]"))
    sos = [o for o in out if o.kind == "sos"]
    assert len(sos) == 1 and sos[0].cls is MsgClass.ALARM
    data = sos[0].data
    assert data["wearer"] == "W1" and data["device"] == "8800000001"
    assert data["pos_stale"] is False and data["pos"]["source"] == "gps"
    assert data["raw"] == "[3G*8800000001*0002*AL,x]"
    assert sos[0].ts_ms == int(clock.time() * 1000)


def test_sos_without_a_fix_carries_the_last_good_position_flagged_stale() -> None:
    clock = ManualClock()
    e = engine(clock)
    e.on_event("gw1", report("8800000001", gps(10, 20)))
    clock.advance(300)
    out = e.on_event("gw1", report("8800000001", None, BandAlarm.SOS))
    (sos,) = [o for o in out if o.kind == "sos"]
    assert sos.data["pos_stale"] is True
    assert sos.data["pos"]["lat"] == pytest.approx(gps(10, 20).lat, abs=1e-7)
    # a band that never had a fix: still an alarm, position null
    out = e.on_event("gw1", report("8800000002", None, BandAlarm.FALL))
    (fall,) = [o for o in out if o.kind == "fall"]
    assert fall.data["pos"] is None and fall.data["pos_stale"] is True


def test_sos_repeats_fold_into_one_episode_and_a_quiet_gap_starts_a_new_one() -> None:
    clock = ManualClock()
    e = engine(clock)
    out: list[Out] = []
    for _ in range(5):  # pressed five times, 20 s apart
        out += e.on_event("gw1", report("8800000001", gps(0, 0), BandAlarm.SOS))
        clock.advance(20)
        out += e.tick()
    assert kinds(out).count("sos") == 1
    out = run(e, clock, 200, talking=all_devices())  # quiet for longer than sos_fold_s: the episode closes
    (summary,) = [o for o in out if o.kind == "alarm_episode"]
    assert summary.cls is MsgClass.EVENT
    assert summary.data["alarm"] == "sos" and summary.data["count"] == 5
    out = e.on_event("gw1", report("8800000001", gps(0, 0), BandAlarm.SOS))
    assert kinds(out).count("sos") == 1  # a new press after the gap: a new alarm


def test_single_press_episode_closes_silently() -> None:
    clock = ManualClock()
    e = engine(clock)
    e.on_event("gw1", report("8800000001", gps(0, 0), BandAlarm.SOS))
    assert "alarm_episode" not in kinds(run(e, clock, 300, talking=all_devices()))


def test_press_counter_that_did_not_move_is_the_same_press() -> None:
    clock = ManualClock()
    e = engine(clock)
    out = e.on_event("gw1", report("AC233FA00001", None, BandAlarm.SOS, press=7))
    assert out == []  # not registered: counted, not alerted
    e.set_county_wearers([Wearer("T1", normalize_device("ac:23:3f:a0:00:01"), None, (), "county")])
    out = []
    for _ in range(4):  # the tag keeps advertising the same press (two gateways hear it, too)
        out += e.on_event("gw1", report("AC:23:3F:A0:00:01", None, BandAlarm.SOS, press=7))
        clock.advance(5)
    assert kinds(out).count("sos") == 1
    clock.advance(200)
    e.tick()
    out = e.on_event("gw1", report("AC:23:3F:A0:00:01", None, BandAlarm.SOS, press=7))
    assert "sos" not in kinds(out)  # still the same press, long after: not a new alarm
    out = e.on_event("gw1", report("AC:23:3F:A0:00:01", None, BandAlarm.SOS, press=8))
    assert kinds(out).count("sos") == 1
    assert e.registry.unknown_frames == 1


def test_band_removed_and_sos_are_separate_episodes() -> None:
    clock = ManualClock()
    e = engine(clock)
    out = e.on_event("gw1", report("8800000001", None, BandAlarm.SOS, BandAlarm.BAND_REMOVED))
    assert sorted(kinds(out)) == ["band_removed", "sos"]
    clock.advance(5)
    assert e.on_event("gw1", report("8800000001", None, BandAlarm.BAND_REMOVED)) == []


def test_lost_contact_once_and_cleared_by_the_next_frame() -> None:
    clock = ManualClock()
    e = engine(clock)
    others = tuple(d for d in all_devices() if d != "8800000003")
    out = run(e, clock, 60, talking=all_devices())
    out = run(e, clock, 30 * 60, talking=others)  # W3 silent for half an hour, the others keep talking
    lost = [o for o in out if o.kind == "lost_contact"]
    assert len(lost) == 1
    assert lost[0].cls is MsgClass.ALARM and lost[0].data["wearer"] == "W3"
    assert lost[0].data["last_seen"] is not None
    out = e.on_event("gw1", report("8800000003", gps(0, 0)))
    (restored,) = [o for o in out if o.kind == "contact_restored"]
    assert restored.cls is MsgClass.EVENT and restored.data["wearer"] == "W3"
    assert restored.data["silent_s"] == pytest.approx(30 * 60, abs=10)
    assert "lost_contact" not in kinds(run(e, clock, 120, talking=all_devices()))


def test_lost_contact_uses_the_wearers_own_interval() -> None:
    clock = ManualClock()
    bands = [WearerConfig("W1", "1", report_interval_s=600.0), WearerConfig("W2", "2")]
    e = WearablesEngine(CFG, [GatewayConfig(id="gw1", url="/dev/null", codec="watch")], bands, clock)
    out: list[Out] = []
    for _ in range(100):  # W2 talks every 10 s; W1 said nothing for 1000 s, but its interval x 3 is 1800 s
        clock.advance(10)
        out += e.on_event("gw1", report("2", None)) + e.tick()
    assert "lost_contact" not in kinds(out)
    for _ in range(100):
        clock.advance(10)
        out += e.on_event("gw1", report("2", None)) + e.tick()
    assert [o.data["wearer"] for o in out if o.kind == "lost_contact"] == ["W1"]


def test_a_silent_gateway_is_one_event_not_a_lost_contact_storm() -> None:
    clock = ManualClock()
    e = engine(clock, silent_s=120.0)
    run(e, clock, 60, talking=all_devices())
    out = run(e, clock, 3600)  # nothing at all for an hour
    assert kinds(out) == ["gateway"]
    assert out[0].data["state"] == "silent" and out[0].data["wearers"] == ["W1", "W2", "W3", "W4", "W5"]
    # traffic resumes: one "up", and every band gets a fresh window before it can be called lost
    out = e.on_event("gw1", report("8800000001", None))
    assert [o.data["state"] for o in out if o.kind == "gateway"] == ["up"]
    out = run(e, clock, 150, talking=("8800000001", "8800000002"))
    assert "lost_contact" not in kinds(out)
    out = run(e, clock, 120, talking=("8800000001", "8800000002"))
    assert sorted(o.data["wearer"] for o in out if o.kind == "lost_contact") == ["W3", "W4", "W5"]


def test_gateway_down_and_up_is_two_events_and_no_false_alarm() -> None:
    clock = ManualClock()
    e = engine(clock)
    assert e.on_gateway_state("gw1", True, "opened") == []  # presumed up at start: only edges are reported
    run(e, clock, 60, talking=all_devices())
    out = e.on_gateway_state("gw1", False, "device unplugged")
    assert [o.data["state"] for o in out] == ["down"]
    assert e.on_gateway_state("gw1", False, "still unplugged") == []  # once per outage
    out = run(e, clock, 1800)  # half an hour unplugged
    assert out == []
    out = e.on_gateway_state("gw1", True, "replugged")
    assert [o.data["state"] for o in out] == ["up"]
    out = run(e, clock, 600, talking=all_devices())
    assert kinds(out).count("lost_contact") == 0 and "gateway" not in kinds(out)


def test_heartbeats_keep_a_gateway_alive() -> None:
    clock = ManualClock()
    e = engine(clock, silent_s=60.0)
    out: list[Out] = []
    for _ in range(100):
        clock.advance(10)
        out += e.on_event("gw1", GatewayHeartbeat("gw1")) + e.tick()
    # the gateway is alive and says so, but no band was ever heard: that is lost contact for each band
    assert "gateway" not in kinds(out)
    assert sorted(o.data["wearer"] for o in out if o.kind == "lost_contact") == ["W1", "W2", "W3", "W4", "W5"]


def test_low_battery_once_per_episode() -> None:
    clock = ManualClock()
    e = engine(clock)
    out: list[Out] = []
    for pct in (30, 20, 19, 18, 25, 15, 10, 35, 45, 19, 18):
        clock.advance(60)
        out += e.on_event("gw1", report("8800000001", None, battery=pct))
    low = [o for o in out if o.kind == "low_battery"]
    assert [o.data["battery_pct"] for o in low] == [20, 19]  # re-armed only after it was charged to >= 40
    assert all(o.cls is MsgClass.EVENT for o in low)
    out = e.on_event("gw1", report("8800000002", None, BandAlarm.LOW_BATTERY, battery=None))
    assert [o.data["battery_pct"] for o in out if o.kind == "low_battery"] == [None]


def test_positions_are_thinned_by_distance_and_time() -> None:
    clock = ManualClock()
    e = engine(clock)  # 50 m, 30 s min, 900 s max
    sent = []
    # standing still for an hour, a fix every 10 s: one at the start, then one per 15 minutes
    for _ in range(360):
        clock.advance(10)
        sent += [o for o in e.on_event("gw1", report("8800000001", gps(0, 0))) if o.kind == "position"]
    assert len(sent) == 4  # minutes 0, 15, 30, 45
    assert all(o.cls is MsgClass.TELEMETRY for o in sent)
    # walking 2 m/s: every 30 s (60 m), not every 10 s
    sent = []
    for i in range(1, 31):
        clock.advance(10)
        sent += [o for o in e.on_event("gw1", report("8800000001", gps(i * 20, 0))) if o.kind == "position"]
    assert len(sent) == 10


def test_geofence_messages_through_the_engine() -> None:
    clock = ManualClock()
    e = engine(clock)
    e.set_county_fences(load_fences(collection(square())), {"W1": ("home",)})
    out = e.on_event("gw1", report("8800000001", gps(0, 0)))
    (state,) = [o for o in out if o.kind == "geofence_state"]
    assert state.cls is MsgClass.EVENT and state.data["state"] == "inside" and state.data["fence"] == "home"
    out = []
    for _ in range(5):
        clock.advance(15)
        out += e.on_event("gw1", report("8800000001", gps(HALF + 100, 0)))
    (exit_,) = [o for o in out if o.kind == "geofence_exit"]
    assert exit_.cls is MsgClass.ALARM
    assert set(exit_.data) >= {"wearer", "device", "fence", "pos"}
    assert exit_.data["distance_m"] == pytest.approx(100, abs=1)
    clock.advance(15)
    out = e.on_event("gw1", report("8800000001", gps(0, 0)))
    assert [o.kind for o in out if o.kind.startswith("geofence")] == ["geofence_enter"]


def test_registry_normalises_macs_and_rejects_bad_lists() -> None:
    r = Registry([Wearer("W1", normalize_device("ac-23-3f-a0-00-01"))])
    assert r.lookup("AC:23:3F:A0:00:01") is not None
    assert r.lookup("ac233fa00001") is not None
    assert r.lookup("nobody") is None and r.lookup("nobody") is None
    assert r.unknown_frames == 2 and r.unknown_devices == 1
    assert parse_wearers({"wearers": [{"id": "W2", "device": "88", "report_interval_s": 30, "fences": ["home"]}]}) \
        == [Wearer("W2", "88", 30.0, ("home",), "county")]
    for bad, match in (({"wearers": "x"}, "expected a list"), ({"wearers": [{"id": "W 1", "device": "1"}]}, "id"),
                       ({"wearers": [{"id": "W1", "device": "1"}, {"id": "W1", "device": "2"}]}, "duplicate"),
                       ({"wearers": [{"id": "W1", "device": "1", "name": "张三"}]}, "unknown key"),
                       ({"wearers": [{"id": "W1", "device": "1", "report_interval_s": 0}]}, "report_interval_s")):
        with pytest.raises(RegistryError, match=match):
            parse_wearers(bad)
