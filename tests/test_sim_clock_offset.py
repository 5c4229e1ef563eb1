"""VILLAGE_CLOCK_OFFSET_S skews the agent's wall clock in sim only; a real box ignores the variable."""

from __future__ import annotations

import time

import pytest

from agent.clock import OffsetClock, SystemClock
from agent.hardware import CLOCK_OFFSET_ENV, build_clock
from agent.profile import HardwareProfile


def test_sim_profile_takes_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "-3600")
    clock = build_clock(HardwareProfile(name="sim", kind="sim"))
    assert isinstance(clock, OffsetClock)
    assert abs(clock.time() - (time.time() - 3600)) < 5
    assert abs(clock.monotonic() - time.monotonic()) < 5  # intervals are untouched


def test_a_real_box_ignores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "-3600")
    assert isinstance(build_clock(HardwareProfile(name="pi4", kind="pi")), SystemClock)


def test_no_variable_no_offset_and_a_bad_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLOCK_OFFSET_ENV, raising=False)
    assert isinstance(build_clock(HardwareProfile(name="sim", kind="sim")), SystemClock)
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "soon")
    with pytest.raises(ValueError, match=CLOCK_OFFSET_ENV):
        build_clock(HardwareProfile(name="sim", kind="sim"))
