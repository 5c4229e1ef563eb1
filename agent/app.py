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
from agent.link import Link, LinkState, StateCallback
from agent.outbox import Outbox
from agent.profile import HardwareProfile, load_profile
from agent.receipts import Receipts
from agent.service import Service
from agent.statusled import StatusLedService
from agent.supervisor import Supervisor
from agent.update.service import make_services as update_services
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


def report_link(board: sdnotify.StatusBoard) -> StateCallback:
    """The link's state edges mirrored to the status board (`link=...`; `mqtt=5|3.1.1` when connected).

    Link calls it on every edge (the same edge that writes link.json), so no edge is missed; the protocol is
    the one of the connection just made, as the link reports it.
    """

    def on_state(state: LinkState, mqtt_version: str | None) -> None:
        if mqtt_version is not None:
            board.set(link=state.value, mqtt=mqtt_version)
        else:
            board.set(link=state.value)

    return on_state


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
    link = Link(config, outbox, router, clock=clock, on_state=report_link(board))
    ctx = AgentContext(config=config, profile=profile, uplink=outbox, receipts=receipts, clock=clock,
                       commands=router, hardware=hardware, listener=link)
    board.set(link=link.state.value)
    heartbeat = Heartbeat(outbox, clock, interval_s=config.box.heartbeat_s,
                          extra=lambda: {"link": {"state": link.state.value, "connects": link.reconnects,
                                                  "refused": link.refused, "qos0_refused": link.qos0_refused}})
    services: list[Service] = [outbox, router, link, heartbeat]
    if hardware.status_led is not None:
        services.append(StatusLedService(hardware.status_led, lambda: link.state is LinkState.CONNECTED))
    for make in (broadcast_services, wearable_services, update_services):
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
