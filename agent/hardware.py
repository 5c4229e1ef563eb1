"""Choose the drivers, once, from the hardware profile: the only module that names concrete drivers.

Profile kind "pi": gpiozero relay on the profile's pin, ALSA player, espeak-ng, serial/BLE gateways.
Profile kind "sim": the twins from sim/ (gpiozero MockFactory relay, a player that keeps a history),
while gateways stay real transports (the simulator is the other end of a pty or socket) except `ble:`,
which has no radio to talk to in sim.
"""

from __future__ import annotations

import functools
import os

from agent.clock import Clock, OffsetClock, SystemClock
from agent.config import Config
from agent.context import Hardware
from agent.profile import HardwareProfile
from drivers.wristband.transport import open_gateway


def build_hardware(profile: HardwareProfile, config: Config) -> Hardware:
    sim = profile.kind == "sim"
    if sim:
        from sim.audio import build_broadcast_hardware
    else:
        from drivers.audio.hardware import build_real_broadcast_hardware as _real

        def build_broadcast_hardware(profile: HardwareProfile, sim: bool, *, voice: str):
            return _real(profile, voice=voice)

    broadcast = build_broadcast_hardware(profile, sim, voice=config.broadcast.tts_voice)
    opener = functools.partial(open_gateway, baudrate=profile.serial.baud, ble_adapter=profile.ble.adapter)
    return Hardware(gateway_opener=opener, relay=broadcast.relay, player=broadcast.player, tts=broadcast.tts)


CLOCK_OFFSET_ENV = "VILLAGE_CLOCK_OFFSET_S"


def build_clock(profile: HardwareProfile) -> Clock:
    """The system clock; in sim only, offset by VILLAGE_CLOCK_OFFSET_S seconds (the simulator's clock skew).

    Read only for profile kind "sim", so a stray variable on a real box changes nothing.
    """
    if profile.kind == "sim" and (raw := os.environ.get(CLOCK_OFFSET_ENV)):
        try:
            return OffsetClock(float(raw))
        except ValueError:
            raise ValueError(f"{CLOCK_OFFSET_ENV}={raw!r} is not a number of seconds") from None
    return SystemClock()
