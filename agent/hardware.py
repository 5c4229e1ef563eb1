"""Choose the drivers, once, from the hardware profile: the only module that names concrete drivers.

Profile kind "pi": gpiozero relay on the profile's pin, ALSA player, espeak-ng, serial/BLE gateways.
Profile kind "sim": the twins from sim/ (gpiozero MockFactory relay, a player that keeps a history),
while gateways stay real transports (the simulator is the other end of a pty or socket) except `ble:`,
which gets the radio twin (sim.wristband.SimAdvertSource: silent unless the simulator feeds it).
Camera probes are plain network code, real in both kinds: sim cameras listen on loopback.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from agent.cameras.settings import CamerasConfig
from agent.clock import Clock, OffsetClock, SystemClock
from agent.config import Config
from agent.context import Hardware
from agent.profile import HardwareProfile
from drivers.camera.base import CameraProbes
from drivers.wristband.codec import make_decoder
from drivers.wristband.transport import open_gateway


def build_hardware(profile: HardwareProfile, config: Config) -> Hardware:
    sim = profile.kind == "sim"
    if sim:
        from sim.audio import build_broadcast_hardware
    else:
        from drivers.audio.hardware import build_real_broadcast_hardware as _real

        def build_broadcast_hardware(profile: HardwareProfile, sim: bool, *, voice: str, hang_slack_s: float):
            return _real(profile, voice=voice, hang_slack_s=hang_slack_s)

    broadcast = build_broadcast_hardware(profile, sim, voice=config.broadcast.tts_voice,
                                         hang_slack_s=config.broadcast.hang_slack_s)
    opener = functools.partial(open_gateway, baudrate=profile.serial.baud, ble_adapter=profile.ble.adapter)
    if sim:
        opener = functools.partial(_sim_gateway, opener)
    return Hardware(gateway_opener=opener, decoder_factory=make_decoder, relay=broadcast.relay,
                    player=broadcast.player, tts=broadcast.tts,
                    camera_probes=build_camera_probes(config.cameras) if config.camera_list else None)


def _sim_gateway(real: Any, url: str) -> Any:
    if url == "ble" or url.startswith("ble:"):
        from drivers.wristband.ble import BleGatewayTransport
        from sim.wristband import SimAdvertSource

        return BleGatewayTransport(SimAdvertSource(), adapter=url[4:] or "hci0", url=url)
    return real(url)


def build_camera_probes(settings: CamerasConfig) -> CameraProbes:
    """The network probes from drivers/camera (right in sim too: sim cameras listen on loopback)."""
    from drivers.camera.grab import FfmpegGrabber
    from drivers.camera.link import SysfsLinkCheck
    from drivers.camera.onvif import HttpOnvifClient
    from drivers.camera.probe import TcpRtspProber

    return CameraProbes(
        rtsp=TcpRtspProber(connect_timeout_s=settings.connect_timeout_s, step_timeout_s=settings.step_timeout_s),
        onvif=HttpOnvifClient(timeout_s=settings.onvif_timeout_s),
        grabber=FfmpegGrabber(timeout_s=settings.grab_timeout_s, concurrency=settings.grab_concurrency,
                              crop_top=settings.crop_top, crop_bottom=settings.crop_bottom),
        link=SysfsLinkCheck(),
    )


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
