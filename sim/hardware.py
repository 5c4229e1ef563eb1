"""The simulator's hardware for profile kind "sim": what the simulator hands the agent, not what it takes.

Registered as the `village_edge.hardware` entry point "sim" (pyproject.toml), which agent.hardware looks
up by the profile's kind; agent/ never imports this package. The twins: the relay and the status LED are
the real gpiozero drivers on gpiozero's MockFactory, the player keeps a history and "plays" for the
media's duration, TTS is espeak-ng when installed (else silent). Gateways stay real transports (the
simulator is the other end of a pty or socket) except `ble:`, which gets the radio twin
(sim.wristband.SimAdvertSource: silent unless the simulator feeds it). Camera probes are plain network
code, real here too: sim cameras listen on loopback.
"""

from __future__ import annotations

from agent.config import Config
from agent.context import Hardware
from agent.hardware import build_camera_probes, open_gateway
from agent.profile import HardwareProfile
from drivers.led.status import GpioStatusLed
from drivers.wristband.codec import make_decoder
from drivers.wristband.reader import GatewayTransport
from sim.audio import build_broadcast_hardware


def build_sim_hardware(profile: HardwareProfile, config: Config) -> Hardware:
    from gpiozero.pins.mock import MockFactory

    broadcast = build_broadcast_hardware(profile, True, voice=config.broadcast.tts_voice,
                                         hang_slack_s=config.broadcast.hang_slack_s)
    led = None
    if profile.status_led.pin is not None:
        led = GpioStatusLed(profile.status_led.pin, active_high=profile.status_led.active_high,
                            pin_factory=MockFactory())
    baud, adapter = profile.serial.baud, profile.ble.adapter

    def gateway(url: str) -> GatewayTransport:
        if url == "ble" or url.startswith("ble:"):
            from drivers.wristband.ble import BleGatewayTransport
            from sim.wristband import SimAdvertSource

            return BleGatewayTransport(SimAdvertSource(), adapter=url[4:] or adapter or "hci0", url=url)
        return open_gateway(url, baudrate=baud, ble_adapter=adapter)

    return Hardware(gateway_opener=gateway, decoder_factory=make_decoder, relay=broadcast.relay,
                    player=broadcast.player, tts=broadcast.tts,
                    camera_probes=build_camera_probes(config.cameras) if config.camera_list else None,
                    status_led=led)
