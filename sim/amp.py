"""The relay twin: the real driver's gpiozero `OutputDevice` on gpiozero's MockFactory.

Because it is gpiozero itself, polarity, initial value and closed-device rules are gpiozero's, not ours.
`history` holds (monotonic time, "on"/"off") for every change, starting with the "off" at construction;
`pin_states()` reads the mock pin's own electrical history (high/low), which shows the polarity.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gpiozero.pins.mock import MockFactory

from drivers.amp.relay import GpioAmpRelay


class TwinAmpRelay(GpioAmpRelay):
    def __init__(self, pin: int = 17, *, active_high: bool = True, factory: MockFactory | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.factory = factory or MockFactory()
        self._clock = clock
        self.history: list[tuple[float, str]] = []
        super().__init__(pin, active_high=active_high, pin_factory=self.factory)
        self.history.append((clock(), "off"))

    def _changed(self, state: str) -> None:
        self.history.append((self._clock(), state))

    def events(self) -> list[str]:
        """The history without times, for comparing in full."""
        return [e for _, e in self.history]

    def pin_states(self) -> list[bool]:
        """The electrical levels the mock pin went through (True = high)."""
        return [bool(s.state) for s in self.factory.pin(self.pin).states]
