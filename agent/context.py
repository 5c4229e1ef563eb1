"""What the composition root (agent.app) hands to each feature when it builds the agent.

A feature exposes `make_services(ctx: AgentContext) -> list[Service]` in its package
(`agent/broadcast/service.py`, `agent/wearables/service.py`, `agent/cameras/service.py`); there it
registers its command handlers with `ctx.commands` and takes its drivers from `ctx.hardware`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.clock import Clock
from agent.config import Config
from agent.profile import HardwareProfile
from agent.protocol.commands import Command
from agent.receipts import Receipts
from agent.service import Uplink

CommandHandler = Callable[[Command], Awaitable[None]]


class CommandRegistry(Protocol):
    def register(self, kind: str, handler: CommandHandler) -> None:
        """Route verified commands of `kind` to `handler`. The registry has already sent `received`."""
        ...


@dataclass
class Hardware:
    """Drivers chosen once by agent.hardware from the profile: real ones on a box, twins in sim.

    Features add the fields they need; each is a drivers/ Protocol, never a concrete class.
    """

    # wristbands: url -> a drivers.wristband.transport.GatewayTransport (serial, socket://, pty, ble:)
    gateway_opener: Callable[[str], Any] | None = None
    # wristbands: `[[gateway]] codec` name -> a drivers.wristband.codec.GatewayCodec (make_decoder on a box)
    decoder_factory: Callable[[str], Any] | None = None
    # broadcast: the amplifier relay, audio player and TTS (drivers/amp, drivers/audio Protocols)
    relay: Any = None
    player: Any = None
    tts: Any = None
    # cameras: probes (drivers/camera Protocols)
    camera_probes: Any = None
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
