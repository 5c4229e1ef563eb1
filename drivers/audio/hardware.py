"""Build the real broadcast drivers (relay, player, TTS) from a hardware profile.

The composition root (agent/hardware.py, profile kind "pi") calls this; the simulator's twins are
built by sim/hardware.py. `profile` is duck-typed (`relay.pin`, `relay.active_high`,
`audio.device`, `audio.mixer`) so drivers/ does not import agent/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.amp.relay import AmpRelay, GpioAmpRelay, NoRelay, default_pin_factory
from drivers.audio.base import AudioPlayer, Tts
from drivers.audio.player import AlsaPlayer
from drivers.audio.tts import EspeakTts


@dataclass
class BroadcastHardware:
    relay: AmpRelay
    player: AudioPlayer
    tts: Tts


def build_real_broadcast_hardware(profile: Any, *, voice: str = "cmn", pin_factory: Any = None,
                                  hang_slack_s: float = 10.0) -> BroadcastHardware:
    relay: AmpRelay
    if profile.relay.pin is None:
        relay = NoRelay()
    else:
        factory = pin_factory if pin_factory is not None else default_pin_factory()
        relay = GpioAmpRelay(profile.relay.pin, active_high=profile.relay.active_high, pin_factory=factory)
    player = AlsaPlayer(profile.audio.device, profile.audio.mixer, hang_slack_s=hang_slack_s)
    return BroadcastHardware(relay=relay, player=player, tts=EspeakTts(voice))
