"""Choose the drivers, once, from the hardware profile: the only module that names concrete drivers.

Profile kind "pi": gpiozero relay and status LED on the profile's pins (one pin factory for both), ALSA
player, espeak-ng, serial/BLE gateways, the network camera probes.

Any other kind is built by whoever registered it, never by this package: the builder for a kind is the
`village_edge.hardware` entry point of that name (pyproject.toml). The simulator registers "sim"
(`sim.hardware:build_sim_hardware`: the twins from sim/). So agent/ never imports sim/ (a box installed
without it just cannot run a "sim" profile, and says so), and the simulator hands its twins to the agent.
tests/test_no_sim_in_agent.py proves it with sim/ made unimportable.

The test switches of a sim box (VILLAGE_CLOCK_OFFSET_S here, VILLAGE_TEST_HANG_AFTER_S in
agent.sdnotify) are read only when the profile's kind is "sim".
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.clock import Clock, OffsetClock, SystemClock
from agent.config import Config
from agent.context import Hardware
from agent.profile import HardwareProfile, ProfileError

if TYPE_CHECKING:
    from agent.cameras.settings import CamerasConfig
    from drivers.camera.base import CameraProbes
    from drivers.wristband.reader import GatewayTransport

HardwareBuilder = Callable[[HardwareProfile, Config], Hardware]
ENTRY_POINT_GROUP = "village_edge.hardware"
REAL_KIND = "pi"


def build_pi_hardware(profile: HardwareProfile, config: Config, *, pin_factory: object = None) -> Hardware:
    """The real drivers of a Raspberry Pi box. Heavy imports happen here, and only what the profile uses."""
    from drivers.audio.hardware import build_real_broadcast_hardware
    from drivers.wristband.codec import make_decoder

    factory = pin_factory
    if factory is None and (profile.relay.pin is not None or profile.status_led.pin is not None):
        from drivers.amp.relay import default_pin_factory

        factory = default_pin_factory()  # one factory (one open GPIO chip) for the relay and the LED
    broadcast = build_real_broadcast_hardware(profile, voice=config.broadcast.tts_voice, pin_factory=factory,
                                              hang_slack_s=config.broadcast.hang_slack_s)
    led = None
    if profile.status_led.pin is not None:
        from drivers.led.status import GpioStatusLed

        led = GpioStatusLed(profile.status_led.pin, active_high=profile.status_led.active_high, pin_factory=factory)
    return Hardware(
        gateway_opener=functools.partial(open_gateway, baudrate=profile.serial.baud, ble_adapter=profile.ble.adapter),
        decoder_factory=make_decoder, relay=broadcast.relay, player=broadcast.player, tts=broadcast.tts,
        camera_probes=build_camera_probes(config.cameras) if config.camera_list else None, status_led=led)


def open_gateway(url: str, *, baudrate: int, ble_adapter: str | None) -> GatewayTransport:
    """drivers.wristband.transport.open_gateway, imported on first use: pyserial (and bleak, for `ble:`)
    load only on a box that has a gateway (about 3 MB of RSS otherwise idle)."""
    from drivers.wristband.transport import open_gateway as open_

    return open_(url, baudrate=baudrate, ble_adapter=ble_adapter)


def hardware_builder(kind: str, profile_name: str = "") -> HardwareBuilder:
    """The builder for a profile kind: "pi" here, any other from its registered entry point.

    ProfileError (one line, the CLI exits 2) when nothing registered the kind or it cannot be imported.
    """
    if kind == REAL_KIND:
        return build_pi_hardware
    from importlib.metadata import entry_points  # only here: a box without pins need not load it

    where = profile_name or kind
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    if not found:
        raise ProfileError(where, "kind", f"{kind!r}: no installed package provides this hardware (entry point "
                                          f"group {ENTRY_POINT_GROUP!r}); for kind \"sim\" install village-edge[sim]")
    try:
        builder: HardwareBuilder = found[0].load()
    except ImportError as exc:
        raise ProfileError(where, "kind", f"{kind!r}: its hardware ({found[0].value}) cannot be imported: "
                                          f"{exc}") from None
    return builder


def build_hardware(profile: HardwareProfile, config: Config) -> Hardware:
    return hardware_builder(profile.kind, profile.name)(profile, config)


def build_camera_probes(settings: CamerasConfig) -> CameraProbes:
    """The network probes from drivers/camera (right in sim too: sim cameras listen on loopback)."""
    from drivers.camera.base import CameraProbes
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
