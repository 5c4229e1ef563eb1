"""`AmpRelay`: the Protocol the broadcast feature drives, and the real driver over gpiozero.

The real driver is a gpiozero `OutputDevice` built with an injected pin factory (never the global one),
`initial_value=False` so the amplifier is off the moment the driver exists, and the profile's polarity
(`active_high`): a relay board that switches on a low level is `active_high = false`, and gpiozero then
drives the pin high for "off". The twin in sim/amp.py is this same class on gpiozero's MockFactory.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("drivers.amp")


class AmpError(Exception):
    """The relay cannot be driven (pin busy, no GPIO chip, device closed)."""


@runtime_checkable
class AmpRelay(Protocol):
    """Switches the amplifier's mains/12 V supply. `on()`/`off()` are idempotent and never block."""

    def on(self) -> None: ...

    def off(self) -> None: ...

    @property
    def is_on(self) -> bool: ...

    def close(self) -> None:
        """Switch off and release the pin."""
        ...


class GpioAmpRelay:
    """A relay on one BCM pin through gpiozero. `pin_factory` is injected (LGPIOFactory on a Pi)."""

    def __init__(self, pin: int, *, active_high: bool = True, pin_factory: Any = None) -> None:
        # Imported here so a box without gpiozero's native backends can still import the Protocol.
        from gpiozero import GPIOZeroError, OutputDevice

        self.pin = pin
        self.active_high = active_high
        self._errors: tuple[type[BaseException], ...] = (GPIOZeroError, OSError)
        try:
            self._dev = OutputDevice(pin, active_high=active_high, initial_value=False, pin_factory=pin_factory)
        except self._errors as exc:
            raise AmpError(f"relay on BCM {pin}: {exc}") from exc

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def _set(self, on: bool) -> None:
        if self._dev.closed:
            raise AmpError(f"relay on BCM {self.pin} is closed")
        if bool(self._dev.is_active) == on:
            return
        try:
            self._dev.on() if on else self._dev.off()
        except self._errors as exc:
            raise AmpError(f"relay on BCM {self.pin}: {exc}") from exc
        self._changed("on" if on else "off")
        log.info("amplifier relay %s", "on" if on else "off")

    def _changed(self, state: str) -> None:
        """A hook for the twin's history; the real driver only logs."""

    @property
    def is_on(self) -> bool:
        return not self._dev.closed and bool(self._dev.is_active)

    def close(self) -> None:
        if self._dev.closed:
            return
        try:
            self.off()
        finally:
            self._dev.close()


class NoRelay:
    """A box without a relay (`relay.pin` unset): the amplifier is always powered; only state is kept."""

    def __init__(self) -> None:
        self._on = False

    def on(self) -> None:
        self._on = True

    def off(self) -> None:
        self._on = False

    @property
    def is_on(self) -> bool:
        return self._on

    def close(self) -> None:
        self._on = False


def default_pin_factory() -> Any:
    """The pin factory for a real Pi: lgpio (works on Pi 5 and Bookworm), else gpiozero's own choice.

    GPIOZERO_PIN_FACTORY in the environment wins (None = let gpiozero read it): `mock` for tests of the
    real code paths in a subprocess, or another backend chosen by a technician.
    """
    if os.environ.get("GPIOZERO_PIN_FACTORY"):
        return None
    try:
        import lgpio
        from gpiozero.pins.lgpio import LGPIOFactory
    except ImportError:
        return None
    try:
        return LGPIOFactory()
    except (lgpio.error, OSError, RuntimeError) as exc:
        raise AmpError(f"no GPIO chip: {exc}") from exc
