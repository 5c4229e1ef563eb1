"""`village agent relay-off -c FILE`: drive the amplifier relay's pin to its inactive level, then exit.

systemd runs it as `ExecStopPost=` after the agent has gone, however it went: a clean stop, the
supervisor's overrun exit, SIGKILL after TimeoutStopSec, the watchdog's SIGABRT, a crash. A Raspberry Pi
GPIO keeps its last level after the process that drove it dies, so without this an agent killed mid-play
would leave the loudspeakers powered (and humming) until someone walks to the box.

Deliberately small and synchronous: no event loop, no state directory, no trust keys (a bad key file must
not keep the amplifier on). It needs only the config's `box.profile` and the profile's `[relay]`.
Exit codes: 0 relay off (or no relay / sim), 1 the pin could not be driven, 2 bad config or profile.
"""

from __future__ import annotations

import logging
import sys

from agent.config import Config
from agent.profile import ProfileError, load_profile

log = logging.getLogger("agent.relayoff")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(config: Config) -> int:
    try:
        profile = load_profile(config.box.profile)
    except ProfileError as exc:
        print(f"village: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if profile.kind == "sim":
        print(f"relay-off: profile {profile.name!r} is a simulation (kind = \"sim\"): no pin to drive")
        return EXIT_OK
    pin, active_high = profile.relay.pin, profile.relay.active_high
    if pin is None:
        print(f"relay-off: profile {profile.name!r} has no relay pin: nothing to do")
        return EXIT_OK
    # Imported here: only this path needs gpiozero and its native backend.
    from drivers.amp.relay import AmpError, GpioAmpRelay, default_pin_factory

    try:
        relay = GpioAmpRelay(pin, active_high=active_high, pin_factory=default_pin_factory())
        relay.close()  # initial_value=False already drove the inactive level; close() switches off again
    except AmpError as exc:
        print(f"relay-off: {exc}", file=sys.stderr)
        return EXIT_FAILED
    level = "high" if not active_high else "low"
    print(f"relay-off: BCM {pin} driven {level} (relay off, active_high = {str(active_high).lower()})")
    return EXIT_OK
