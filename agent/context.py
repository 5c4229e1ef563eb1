"""What the composition root (agent.app) hands to each feature when it builds the agent.

A feature exposes `make_services(ctx: AgentContext) -> list[Service]` in its package
(`agent/broadcast/service.py`, `agent/wearables/service.py`, `agent/cameras/service.py`); there it
registers its command handlers with `ctx.commands` and takes its drivers from `ctx.hardware`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.clock import Clock
from agent.config import Config
from agent.profile import HardwareProfile
from agent.protocol.commands import Command
from agent.receipts import Receipts
from agent.service import TopicListener, Uplink

if TYPE_CHECKING:  # the Protocols only: importing drivers/ here would load every driver on every box
    from drivers.amp.relay import AmpRelay
    from drivers.audio.base import AudioPlayer, Tts
    from drivers.camera.base import CameraProbes
    from drivers.led.status import StatusLight
    from drivers.wristband.codec import GatewayCodec
    from drivers.wristband.reader import GatewayTransport

CommandHandler = Callable[[Command], Awaitable[None]]


class CommandRegistry(Protocol):
    def register(self, kind: str, handler: CommandHandler) -> None:
        """Route verified commands of `kind` to `handler`. The registry has already sent `received`."""
        ...


@dataclass
class Hardware:
    """Drivers chosen once by agent.hardware from the profile: real ones on a box, twins in sim.

    Features add the fields they need; each is a drivers/ Protocol, never a concrete class. None = this
    box has no such hardware (the feature that needs it refuses to start, naming the field).
    """

    # wristbands: url -> a transport (serial, socket://, pty, ble:), not opened yet
    gateway_opener: Callable[[str], GatewayTransport] | None = None
    # wristbands: `[[gateway]] codec` name -> a decoder (drivers.wristband.codec.make_decoder on a box)
    decoder_factory: Callable[[str], GatewayCodec] | None = None
    # broadcast: the amplifier relay, audio player and TTS
    relay: AmpRelay | None = None
    player: AudioPlayer | None = None
    tts: Tts | None = None
    # cameras: RTSP, ONVIF, frame grabber, LAN link check
    camera_probes: CameraProbes | None = None
    # the box's status LED (profile [status_led]); driven by agent.statusled
    status_led: StatusLight | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentContext:
    config: Config
    profile: HardwareProfile
    uplink: Uplink
    receipts: Receipts
    clock: Clock
    commands: CommandRegistry
    hardware: Hardware
    # QoS 0 topics on the box's own broker connection (the link): live audio. None where no link runs
    listener: TopicListener | None = None
