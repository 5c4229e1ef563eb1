"""The camera state machine and cycle decisions over scripted probe results, on a ManualClock."""

from __future__ import annotations

from agent.cameras.health import Fleet, classify, lan_down
from agent.cameras.state import Action, CameraHealth, CamState, Kind, Observation
from agent.cameras.store import DeviceRecord, device_changes
from agent.clock import ManualClock
from drivers.camera.base import ProbeOutcome, ProbeResult

GOOD = Observation.good()
FAIL = Observation(Kind.FAILED, "timeout")
REFUSED = Observation(Kind.FAILED, "unreachable")
AUTH = Observation(Kind.BAD, "auth_failed")
BLACK = Observation(Kind.BAD, "black")
LAN = Observation(Kind.NEUTRAL)


def run(h: CameraHealth, clock: ManualClock, script: list[Observation], step: float = 60.0) -> list[tuple]:
    """Feed one observation per cycle; a CONFIRM is answered by the same observation (like a re-probe)."""
    out = []
    for obs in script:
        clock.advance(step)
        change, action = h.observe(obs)
        if change:
            out.append((change.state, change.reason))
        if action is Action.CONFIRM:
            change, _ = h.observe(obs)
            if change:
                out.append((change.state, change.reason))
    return out


def test_online_after_two_good_cycles():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    assert h.state is CamState.UNKNOWN
    assert run(h, clock, [GOOD]) == []
    assert run(h, clock, [GOOD]) == [(CamState.ONLINE, "")]
    assert run(h, clock, [GOOD] * 5) == []


def test_offline_needs_three_failed_cycles_and_a_failed_confirm():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    run(h, clock, [GOOD, GOOD])
    clock.advance(60)
    assert h.observe(FAIL) == (None, Action.NONE)
    clock.advance(60)
    assert h.observe(FAIL) == (None, Action.NONE)
    first_failure = clock.time() - 60
    clock.advance(60)
    assert h.observe(FAIL) == (None, Action.CONFIRM)  # third failed cycle: confirm now, not offline yet
    change, _ = h.observe(REFUSED)  # the confirm probe fails too
    assert change is not None and change.state is CamState.OFFLINE and change.reason == "unreachable"
    assert change.failing_since == first_failure
    assert change.previous is CamState.ONLINE


def test_confirm_that_succeeds_keeps_it_online():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    run(h, clock, [GOOD, GOOD])
    for _ in range(2):
        clock.advance(60)
        h.observe(FAIL)
    clock.advance(60)
    assert h.observe(FAIL)[1] is Action.CONFIRM
    assert h.observe(GOOD) == (None, Action.NONE)
    assert h.state is CamState.ONLINE
    # and the streak starts from zero again
    assert run(h, clock, [FAIL, FAIL]) == []


def test_blip_is_not_offline():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    script = [GOOD, GOOD, FAIL, GOOD, FAIL, FAIL, GOOD, GOOD, FAIL, GOOD]
    assert run(h, clock, script) == [(CamState.ONLINE, "")]


def test_flapping_camera_does_not_flap_the_state():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    changes = run(h, clock, [GOOD, FAIL] * 20)
    assert changes == []  # never two good in a row, never three failed in a row
    assert h.state is CamState.UNKNOWN
    # a camera down 3 of every 4 cycles ends offline, once, and stays there
    clock2 = ManualClock()
    h2 = CameraHealth("c2", clock2)
    changes = run(h2, clock2, [GOOD, GOOD] + [FAIL, FAIL, FAIL, GOOD] * 5)
    assert changes[:2] == [(CamState.ONLINE, ""), (CamState.OFFLINE, "timeout")]
    assert all(s in (CamState.ONLINE, CamState.OFFLINE) for s, _ in changes)


def test_offline_back_online_needs_two_good_cycles():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    run(h, clock, [GOOD, GOOD, FAIL, FAIL, FAIL])
    assert h.state is CamState.OFFLINE
    assert run(h, clock, [GOOD]) == []
    assert run(h, clock, [GOOD]) == [(CamState.ONLINE, "")]


def test_auth_failure_is_immediate_and_holds_the_credential_for_an_hour():
    clock = ManualClock()
    h = CameraHealth("c1", clock, auth_holdoff_s=3600)
    run(h, clock, [GOOD, GOOD])
    assert h.credentials_allowed()
    assert run(h, clock, [AUTH]) == [(CamState.DEGRADED, "auth_failed")]
    assert not h.credentials_allowed()
    # while held back the probe goes without the password; the camera still asks: same state, no event
    assert run(h, clock, [AUTH] * 10) == []
    clock.advance(3600 - 10 * 60 - 1)
    assert not h.credentials_allowed()
    clock.advance(2)
    assert h.credentials_allowed()
    # fixed on the camera: two good cycles
    assert run(h, clock, [GOOD, GOOD]) == [(CamState.ONLINE, "")]


def test_auth_held_camera_can_still_go_offline():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    run(h, clock, [GOOD, GOOD, AUTH])
    assert run(h, clock, [FAIL, FAIL, FAIL]) == [(CamState.OFFLINE, "timeout")]


def test_changed_credentials_release_the_hold():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    run(h, clock, [AUTH])
    assert not h.credentials_allowed()
    h.release_credentials()
    assert h.credentials_allowed()


def test_black_picture_needs_two_cycles_and_reason_changes_are_reported():
    clock = ManualClock()
    h = CameraHealth("c1", clock)
    run(h, clock, [GOOD, GOOD])
    assert run(h, clock, [BLACK]) == []
    assert run(h, clock, [BLACK]) == [(CamState.DEGRADED, "black")]
    assert run(h, clock, [Observation(Kind.BAD, "frozen")]) == [(CamState.DEGRADED, "frozen")]
    assert run(h, clock, [GOOD, GOOD]) == [(CamState.ONLINE, "")]


def test_agent_downtime_is_unknown_and_counted_as_such():
    clock = ManualClock()
    fleet = Fleet(["a", "b"], clock)
    stopped_at = clock.time() - 7200  # the last moment the previous run was watching
    changes = fleet.start("agent_down", since=stopped_at)
    assert [(c.camera, c.state, c.reason, c.since) for c in changes] == [
        ("a", CamState.UNKNOWN, "agent_down", stopped_at), ("b", CamState.UNKNOWN, "agent_down", stopped_at)]
    fleet["a"].add_seconds(CamState.UNKNOWN, 7200)
    clock.advance(60)
    fleet.end_cycle({"a": GOOD, "b": GOOD}, {}, True)
    clock.advance(60)
    out = fleet.end_cycle({"a": GOOD, "b": GOOD}, {}, True)
    assert {c.camera for c in out.changes} == {"a", "b"}
    clock.advance(30)
    secs = fleet["a"].take_seconds()
    assert secs["unknown"] == 7200 + 120
    assert secs["online"] == 30
    assert secs["offline"] == 0


def _res(outcome: ProbeOutcome) -> ProbeResult:
    return ProbeResult(outcome, "connect")


def test_all_cameras_unreachable_at_once_is_lan_down_not_offline():
    clock = ManualClock()
    fleet = Fleet(["a", "b", "c"], clock)
    for _ in range(2):
        clock.advance(60)
        fleet.end_cycle(dict.fromkeys("abc", GOOD), {k: _res(ProbeOutcome.OK) for k in "abc"}, None)
    assert fleet.counts() == {"online": 3}
    failing = {k: _res(ProbeOutcome.TIMEOUT) for k in "abc"}
    for i in range(3):
        clock.advance(60)
        out = fleet.end_cycle(dict.fromkeys("abc", FAIL), failing, None)
        assert out.lan_down and not out.confirm
        assert out.changes == [] if i < 2 else len(out.changes) == 3
    assert fleet.counts() == {"unknown": 3}
    assert fleet["a"].reason == "lan_down"
    # one camera really dead among live ones is that camera
    clock.advance(60)
    mixed = {"a": _res(ProbeOutcome.TIMEOUT), "b": _res(ProbeOutcome.OK), "c": _res(ProbeOutcome.OK)}
    out = fleet.end_cycle({"a": FAIL, "b": GOOD, "c": GOOD}, mixed, None)
    assert not out.lan_down


def test_link_down_from_the_kernel_is_lan_down_even_with_one_camera():
    assert lan_down({"a": _res(ProbeOutcome.TIMEOUT)}, False)
    assert not lan_down({"a": _res(ProbeOutcome.TIMEOUT)}, True)
    assert not lan_down({"a": _res(ProbeOutcome.TIMEOUT)}, None)
    assert lan_down({"a": _res(ProbeOutcome.UNREACHABLE), "b": _res(ProbeOutcome.TIMEOUT)}, None)
    assert not lan_down({"a": _res(ProbeOutcome.NOT_FOUND), "b": _res(ProbeOutcome.TIMEOUT)}, None)


def test_lan_blip_counts_for_nothing():
    clock = ManualClock()
    fleet = Fleet(["a", "b"], clock)
    ok = {k: _res(ProbeOutcome.OK) for k in "ab"}
    fleet.end_cycle(dict.fromkeys("ab", GOOD), ok, True)
    fleet.end_cycle(dict.fromkeys("ab", GOOD), ok, True)
    out = fleet.end_cycle(dict.fromkeys("ab", FAIL), {k: _res(ProbeOutcome.TIMEOUT) for k in "ab"}, False)
    assert out.lan_down and out.changes == []
    assert fleet.counts() == {"online": 2}
    assert fleet["a"].failed == 0


def test_maintenance_is_not_probed_into_other_states():
    clock = ManualClock()
    h = CameraHealth("c1", clock, maintenance=True)
    assert h.state is CamState.MAINTENANCE
    assert run(h, clock, [FAIL] * 5 + [GOOD] * 3) == []
    assert h.set_maintenance(False).state is CamState.UNKNOWN


def test_classify():
    assert classify(_res(ProbeOutcome.OK), held_back=False).kind is Kind.GOOD
    assert classify(_res(ProbeOutcome.TIMEOUT), held_back=False) == Observation(Kind.FAILED, "timeout")
    assert classify(_res(ProbeOutcome.AUTH_FAILED), held_back=False).reason == "auth_failed"
    assert classify(_res(ProbeOutcome.AUTH_REQUIRED), held_back=True).reason == "auth_failed"
    assert classify(_res(ProbeOutcome.AUTH_REQUIRED), held_back=False).reason == "no_credentials"
    assert classify(_res(ProbeOutcome.NOT_FOUND), held_back=False) == Observation(Kind.BAD, "not_found")


def test_device_changes():
    prev = DeviceRecord("S1", "V1", "M", 1000.0, seen_at=10_000.0)
    assert device_changes(None, prev, 7200) == []
    same = DeviceRecord("S1", "V1", "M", 4600.0, seen_at=13_600.0)
    assert device_changes(prev, same, 7200) == []
    rebooted = DeviceRecord("S1", "V1", "M", 300.0, seen_at=13_600.0)
    assert [c["change"] for c in device_changes(prev, rebooted, 7200)] == ["rebooted"]
    # uptime larger than before but shorter than the time since the last reading: rebooted in between
    quick = DeviceRecord("S1", "V1", "M", 1500.0, seen_at=13_600.0)
    assert [c["change"] for c in device_changes(prev, quick, 7200)] == ["rebooted"]
    # a wall clock jump (gap beyond max) is not taken as a reboot
    jumped = DeviceRecord("S1", "V1", "M", 1500.0, seen_at=10_000.0 + 10**6)
    assert device_changes(prev, jumped, 7200) == []
    replaced = DeviceRecord("S2", "V1", "M", 20.0, seen_at=13_600.0)
    assert [c["change"] for c in device_changes(prev, replaced, 7200)] == ["replaced"]
    upgraded = DeviceRecord("S1", "V2", "M", 20.0, seen_at=13_600.0)
    assert [c["change"] for c in device_changes(prev, upgraded, 7200)] == ["firmware_changed", "rebooted"]
    no_uptime = DeviceRecord("S1", "V1", "M", None, seen_at=13_600.0)
    assert device_changes(prev, no_uptime, 7200) == []
