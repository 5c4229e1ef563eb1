"""The profile's `[status_led]`: steady while the link is up, blinking while not, off when the agent stops.

It used to be documented and shipped in every profile and read by nothing. Real gpiozero on its
MockFactory (the pin's own electrical history is checked), and the whole agent wired by agent.app.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.statusled import StatusLedService
from drivers.led.status import GpioStatusLed, LedError, StatusLight


async def until(pred: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.005)


def levels(factory: MockFactory, pin: int) -> list[bool]:
    return [bool(s.state) for s in factory.pin(pin).states]


async def test_steady_when_connected_blinking_when_not_and_off_at_the_end() -> None:
    factory = MockFactory()
    led = GpioStatusLed(27, pin_factory=factory)
    assert isinstance(led, StatusLight) and not led.is_lit
    up = False
    service = StatusLedService(led, lambda: up, period_s=0.005)
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(ready.set))
    try:
        await until(ready.is_set)
        await until(lambda: service.ticks >= 6)  # link down: on, off, on, off ...
        down = levels(factory, 27)
        assert down.count(True) >= 3 and down.count(False) >= 3
        assert all(a != b for a, b in itertools.pairwise(down)), "each tick toggles"
        up = True
        seen = service.ticks
        await until(lambda: service.ticks >= seen + 1)
        lit_at = len(levels(factory, 27))
        await until(lambda: service.ticks >= seen + 6)
        assert led.is_lit and levels(factory, 27)[lit_at:] == [], "steady: no change while connected"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not led.is_lit and levels(factory, 27)[-1] is False  # off
    GpioStatusLed(27, pin_factory=factory).close()  # the pin was released: it can be claimed again


def test_polarity_follows_the_profile() -> None:
    factory = MockFactory()
    led = GpioStatusLed(22, active_high=False, pin_factory=factory)
    assert levels(factory, 22)[-1] is True  # off = high on an active-low LED
    led.on()
    assert levels(factory, 22)[-1] is False and led.is_lit
    led.close()
    assert levels(factory, 22)[-1] is True


async def test_an_led_that_fails_is_logged_once_and_never_stops_the_service(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        calls = 0

        def on(self) -> None:
            Broken.calls += 1
            raise LedError("BCM 27: pin busy")

        def off(self) -> None:
            raise LedError("BCM 27: pin busy")

        @property
        def is_lit(self) -> bool:
            return False

        def close(self) -> None:
            raise LedError("BCM 27: pin busy")

    service = StatusLedService(Broken(), lambda: False, period_s=0.001)
    task = asyncio.create_task(service.run(lambda: None))
    await until(lambda: service.ticks >= 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert Broken.calls == 1
    assert [r.levelname for r in caplog.records if "status LED" in r.getMessage()] == ["WARNING", "WARNING"]


def test_the_agent_drives_the_profiles_led(tmp_path: Path) -> None:
    from agent.app import build_agent
    from agent.config import parse_config
    from agent.profile import load_profile
    from sim.hardware import build_sim_hardware
    from tests.support import agent_config_dict

    config = parse_config(agent_config_dict(tmp_path, "mqtt://127.0.0.1:1"))
    profile = load_profile("sim")
    assert profile.status_led.pin == 27
    agent = build_agent(config, profile=profile, hardware=build_sim_hardware(profile, config))
    (svc,) = [s for s in agent.services if isinstance(s, StatusLedService)]
    assert isinstance(svc.led, GpioStatusLed) and svc.led.pin == 27
    assert svc.link_up() is False  # the link has not connected yet
