"""The composition root: the one place that turns a Config into running services.

It picks the drivers (agent.hardware: real ones for kind "pi"; for kind "sim" the twins the simulator
registered), builds the outbox, the command router, the link, the heartbeat and the status LED, asks each
feature for its services (`make_services(ctx)`), and hands them all to the supervisor.

What the box does is also published as one structured STATUS= line (agent.sdnotify.StatusBoard): the
link's state edges and protocol, and every relay switch. The simulator and the tests read that line, not
the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent import sdnotify
from agent.broadcast.service import make_services as broadcast_services
from agent.clock import Clock
from agent.commands import CommandRouter
from agent.config import Config
from agent.context import AgentContext, Hardware
from agent.hardware import build_clock, build_hardware
from agent.heartbeat import Heartbeat
from agent.link import Broker, Link, LinkState
from agent.outbox import Outbox
from agent.profile import HardwareProfile, load_profile
from agent.receipts import Receipts
from agent.service import Service
from agent.statusled import StatusLedService
from agent.supervisor import Supervisor
from agent.wearables.service import make_services as wearable_services
from drivers.amp.relay import AmpRelay

log = logging.getLogger("agent")


@dataclass
class Agent:
    context: AgentContext
    outbox: Outbox
    link: Link
    router: CommandRouter
    services: list[Service]
    supervisor: Supervisor
    board: sdnotify.StatusBoard


class ReportedRelay:
    """The amplifier relay with every switch mirrored to the status board (`relay=on|off`).

    Attributes it does not define come from the wrapped relay, so a test still reads its twin's history.
    """

    def __init__(self, relay: AmpRelay, board: sdnotify.StatusBoard) -> None:
        self.relay = relay
        self.board = board
        board.set(relay="on" if relay.is_on else "off")

    def on(self) -> None:
        self.relay.on()
        self.board.set(relay="on" if self.relay.is_on else "off")

    def off(self) -> None:
        self.relay.off()
        self.board.set(relay="on" if self.relay.is_on else "off")

    @property
    def is_on(self) -> bool:
        return self.relay.is_on

    def close(self) -> None:
        try:
            self.relay.close()
        finally:
            self.board.set(relay="on" if self.relay.is_on else "off")

    def __getattr__(self, name: str) -> Any:
        if name == "relay":  # not set yet (copy, unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.relay, name)


class ReportedLink(Link):
    """The link with its state edges mirrored to the status board (`link=...`, `mqtt=5|3.1.1`).

    It hooks the link's own state edge (`_set_state`, which also writes link.json) rather than polling, so
    no edge is missed. The protocol is the link's choice for that broker at the moment it connected.
    """

    def __init__(self, *args: Any, board: sdnotify.StatusBoard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.board = board
        board.set(link=self.state.value)

    def _set_state(self, state: LinkState, broker: Broker) -> None:
        super()._set_state(state, broker)
        if state is LinkState.CONNECTED:
            self.board.set(link=state.value, mqtt="5" if self._speaks_v5(broker) else "3.1.1")
        else:
            self.board.set(link=state.value)

    def _speaks_v5(self, broker: Broker) -> bool:
        # the rule of Link._session: "5" as configured, or "auto" unless this URL is held on 3.1.1 (which
        # _session records before the connection is served, i.e. before this CONNECTED edge)
        mode = self.config.mqtt.protocol
        return mode == "5" or (mode == "auto" and self.clock.monotonic() >= self._v311.get(broker.url, 0.0))


def build_agent(config: Config, *, clock: Clock | None = None, hardware: Hardware | None = None,
                profile: HardwareProfile | None = None) -> Agent:
    profile = profile or load_profile(config.box.profile)
    clock = clock or build_clock(profile)  # SystemClock; offset only in sim (VILLAGE_CLOCK_OFFSET_S)
    board = sdnotify.StatusBoard()
    board.set(profile=profile.kind)
    config.box.state_dir.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(
        config.outbox_path, config.box.id,
        max_bytes=config.outbox.max_bytes,
        max_file_bytes=config.outbox.max_file_bytes,
        telemetry_ttl_s=config.outbox.telemetry_ttl_s,
        commit_interval_s=config.outbox.commit_interval_ms / 1000,
        clock=clock,
    )
    receipts = Receipts(outbox, clock)
    router = CommandRouter(config, receipts, clock, config.box.state_dir)
    hardware = hardware if hardware is not None else build_hardware(profile, config)
    if hardware.relay is not None:
        hardware.relay = ReportedRelay(hardware.relay, board)
    ctx = AgentContext(config=config, profile=profile, uplink=outbox, receipts=receipts, clock=clock,
                       commands=router, hardware=hardware)
    link = ReportedLink(config, outbox, router, clock=clock, board=board)
    heartbeat = Heartbeat(outbox, clock, interval_s=config.box.heartbeat_s,
                          extra=lambda: {"link": {"state": link.state.value, "connects": link.reconnects,
                                                  "refused": link.refused, "qos0_refused": link.qos0_refused}})
    services: list[Service] = [outbox, router, link, heartbeat]
    if hardware.status_led is not None:
        services.append(StatusLedService(hardware.status_led, lambda: link.state is LinkState.CONNECTED))
    for make in (broadcast_services, wearable_services):
        services += make(ctx)
    if config.camera_list:  # imported only where cameras are watched: about 1 MB of RSS otherwise
        from agent.cameras.service import make_services as camera_services

        services += camera_services(ctx)
    if (hang := sdnotify.hang_for_tests(profile.kind)) is not None:  # sim profile + env var only
        services.append(hang)
    return Agent(ctx, outbox, link, router, services, Supervisor(services, board=board), board)


async def run_agent(config: Config, *, clock: Clock | None = None, hardware: Hardware | None = None,
                    profile: HardwareProfile | None = None) -> int:
    agent = build_agent(config, clock=clock, hardware=hardware, profile=profile)
    profile = agent.context.profile
    log.info("agent: box %s starting (%d services, profile %s)", config.box.id, len(agent.services), profile.name)
    if profile.kind == "sim":
        log.warning("agent: profile %s is a SIMULATION (kind = \"sim\"): the relay, audio and radio are twins, "
                    "nothing drives real hardware. A real box needs a real profile in [box] profile", profile.name)
    return await agent.supervisor.run()
