"""The composition root: the one place that turns a Config into running services.

It picks the drivers (agent.hardware: real ones on a box, twins in sim), builds the outbox, the command
router, the link and the heartbeat, asks each feature for its services (`make_services(ctx)`), and hands
them all to the supervisor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent import sdnotify
from agent.broadcast.service import make_services as broadcast_services
from agent.cameras.service import make_services as camera_services
from agent.clock import Clock
from agent.commands import CommandRouter
from agent.config import Config
from agent.context import AgentContext, Hardware
from agent.hardware import build_clock, build_hardware
from agent.heartbeat import Heartbeat
from agent.link import Link
from agent.outbox import Outbox
from agent.profile import HardwareProfile, load_profile
from agent.receipts import Receipts
from agent.service import Service
from agent.supervisor import Supervisor
from agent.wearables.service import make_services as wearable_services

log = logging.getLogger("agent")


@dataclass
class Agent:
    context: AgentContext
    outbox: Outbox
    link: Link
    router: CommandRouter
    services: list[Service]
    supervisor: Supervisor


def build_agent(config: Config, *, clock: Clock | None = None, hardware: Hardware | None = None,
                profile: HardwareProfile | None = None) -> Agent:
    profile = profile or load_profile(config.box.profile)
    clock = clock or build_clock(profile)  # SystemClock; offset only in sim (VILLAGE_CLOCK_OFFSET_S)
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
    ctx = AgentContext(config=config, profile=profile, uplink=outbox, receipts=receipts, clock=clock,
                       commands=router, hardware=hardware)
    link = Link(config, outbox, router, clock=clock)
    heartbeat = Heartbeat(outbox, clock, interval_s=config.box.heartbeat_s,
                          extra=lambda: {"link": {"state": link.state.value, "connects": link.reconnects,
                                                  "refused": link.refused}})
    services: list[Service] = [outbox, router, link, heartbeat]
    for make in (broadcast_services, wearable_services, camera_services):
        services += make(ctx)
    if (hang := sdnotify.hang_for_tests(profile.kind)) is not None:  # sim profile + env var only
        services.append(hang)
    return Agent(ctx, outbox, link, router, services, Supervisor(services))


async def run_agent(config: Config, *, clock: Clock | None = None, hardware: Hardware | None = None,
                    profile: HardwareProfile | None = None) -> int:
    agent = build_agent(config, clock=clock, hardware=hardware, profile=profile)
    log.info("agent: box %s starting (%d services, profile %s)", config.box.id, len(agent.services),
             agent.context.profile.name)
    return await agent.supervisor.run()
