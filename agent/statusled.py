"""The status LED service (profile `[status_led] pin`): what the box shows someone standing in front of it.

- steady on: the link to the county broker is up;
- blinking (on/off every `period_s`): it is not (no 4G, broker down, still connecting);
- off: the agent is not running (switched off in `finally`, and the pin is released).

The LED is toggled from the event loop, so a hung loop freezes it (lit or dark, never a healthy blink);
the systemd watchdog restarts such an agent. An LED that cannot be driven is logged once and left alone:
a status light is never a reason to stop the box.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from drivers.led.status import LedError, StatusLight

log = logging.getLogger("agent.statusled")

BLINK_PERIOD_S = 0.5


class StatusLedService:
    name = "status_led"

    def __init__(self, led: StatusLight, link_up: Callable[[], bool], *, period_s: float = BLINK_PERIOD_S) -> None:
        self.led = led
        self.link_up = link_up
        self.period_s = period_s
        self.ticks = 0  # loop turns, for tests to wait on
        self._broken = False

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        try:
            while True:
                self._show(self.link_up())
                self.ticks += 1
                await asyncio.sleep(self.period_s)
        finally:
            try:
                self.led.close()
            except LedError as exc:
                log.warning("status LED: cannot switch it off: %s", exc)

    def _show(self, up: bool) -> None:
        if self._broken:
            return
        try:
            if up:
                self.led.on()
            elif self.led.is_lit:
                self.led.off()
            else:
                self.led.on()
        except LedError as exc:
            self._broken = True
            log.warning("status LED: %s; it stays as it is", exc)
