"""`StatusLight`: the Protocol the agent's status-LED service drives, and the real driver over gpiozero.

Like the amplifier relay (drivers/amp/relay.py): a gpiozero `LED` on an injected pin factory (never the
global one), off the moment the driver exists (`initial_value=False`), the profile's polarity. The twin
(sim/hardware.py, the tests) is this same class on gpiozero's MockFactory. Blinking is done by the
caller toggling on/off from the event loop, not by gpiozero's blink thread: a hung agent then shows a
frozen LED instead of a healthy-looking blink.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class LedError(Exception):
    """The LED pin cannot be driven (pin busy, no GPIO chip)."""


@runtime_checkable
class StatusLight(Protocol):
    def on(self) -> None: ...

    def off(self) -> None: ...

    @property
    def is_lit(self) -> bool: ...

    def close(self) -> None:
        """Switch off and release the pin."""
        ...


class GpioStatusLed:
    """An LED on one BCM pin through gpiozero. `pin_factory` is injected (LGPIOFactory on a Pi)."""

    def __init__(self, pin: int, *, active_high: bool = True, pin_factory: Any = None) -> None:
        from gpiozero import LED, GPIOZeroError  # imported here, like the relay: only boxes with an LED

        self.pin = pin
        self._errors: tuple[type[BaseException], ...] = (GPIOZeroError, OSError)
        try:
            self._dev = LED(pin, active_high=active_high, initial_value=False, pin_factory=pin_factory)
        except self._errors as exc:
            raise LedError(f"status LED on BCM {pin}: {exc}") from exc

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def _set(self, lit: bool) -> None:
        if self._dev.closed:
            return  # closed at shutdown: nothing left to show
        try:
            self._dev.on() if lit else self._dev.off()
        except self._errors as exc:
            raise LedError(f"status LED on BCM {self.pin}: {exc}") from exc

    @property
    def is_lit(self) -> bool:
        return not self._dev.closed and bool(self._dev.is_lit)

    def close(self) -> None:
        if self._dev.closed:
            return
        try:
            self._dev.off()
        finally:
            self._dev.close()
