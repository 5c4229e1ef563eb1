"""Contract test for the amplifier relay: the real gpiozero driver (MockFactory injected) and the twin."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.amp.relay import AmpError, AmpRelay, GpioAmpRelay, NoRelay
from drivers.audio.hardware import build_real_broadcast_hardware
from sim.amp import TwinAmpRelay


def real(active_high: bool) -> tuple[AmpRelay, MockFactory]:
    factory = MockFactory()
    return GpioAmpRelay(17, active_high=active_high, pin_factory=factory), factory


def twin(active_high: bool) -> tuple[AmpRelay, MockFactory]:
    relay = TwinAmpRelay(17, active_high=active_high)
    return relay, relay.factory


MAKERS = pytest.mark.parametrize("make", [real, twin], ids=["real", "twin"])


@MAKERS
@pytest.mark.parametrize("active_high", [True, False])
def test_off_at_construction_with_polarity(make: Callable, active_high: bool) -> None:
    relay, factory = make(active_high)
    assert isinstance(relay, AmpRelay)
    assert not relay.is_on
    assert factory.pin(17).state is (not active_high)  # "off" is low for active-high, high for active-low
    relay.on()
    assert relay.is_on and factory.pin(17).state is active_high
    relay.on()  # idempotent
    relay.off()
    assert not relay.is_on and factory.pin(17).state is (not active_high)
    relay.close()


@MAKERS
def test_close_switches_off_and_further_use_is_an_amp_error(make: Callable) -> None:
    relay, factory = make(True)
    relay.on()
    relay.close()
    assert not relay.is_on and factory.pin(17).state is False
    with pytest.raises(AmpError):
        relay.on()
    relay.close()  # twice is fine


def test_pin_already_in_use_is_an_amp_error() -> None:
    factory = MockFactory()
    first = GpioAmpRelay(17, pin_factory=factory)
    with pytest.raises(AmpError):
        GpioAmpRelay(17, pin_factory=factory)
    first.close()


def test_twin_history_and_pin_levels() -> None:
    t = iter(range(100))
    relay = TwinAmpRelay(5, active_high=False, clock=lambda: float(next(t)))
    relay.on()
    relay.on()
    relay.off()
    assert relay.history == [(0.0, "off"), (1.0, "on"), (2.0, "off")]
    assert relay.events() == ["off", "on", "off"]
    assert relay.pin_states() == [False, True, False, True]  # mock pin starts low; active-low "off" is high


class _Profile:
    class relay:  # mimics HardwareProfile's attribute shape
        pin = 22
        active_high = False

    class audio:
        device = "null"
        mixer = None


def test_real_builder_uses_the_profile() -> None:
    factory = MockFactory()
    hw = build_real_broadcast_hardware(_Profile, pin_factory=factory)
    assert isinstance(hw.relay, GpioAmpRelay) and hw.relay.pin == 22 and not hw.relay.active_high
    assert factory.pin(22).state is True  # active-low relay held off
    assert hw.player.device == "null" and hw.tts.voice == "cmn"
    hw.relay.close()


def test_no_relay_pin_means_no_relay() -> None:
    class P(_Profile):
        class relay:
            pin = None
            active_high = True

    hw = build_real_broadcast_hardware(P)
    assert isinstance(hw.relay, NoRelay)
