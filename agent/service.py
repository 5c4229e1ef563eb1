"""What the supervisor runs, what features send uplink through, and how commands reach features.

These Protocols are the seams between the agent's parts: the supervisor knows only `Service`, features
know only `Uplink` (the outbox implements it) and `CommandSink` (the link calls it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.protocol.envelope import Envelope, MsgClass


class Service(Protocol):
    """A long-running part of the agent. The constructor only stores arguments; work starts in run().

    `run` calls `ready()` once it is serving (the supervisor tells systemd READY=1 when all are ready),
    runs until cancelled, and cleans up in `finally`. An exception out of run() is a crash: the
    supervisor logs it with its traceback and the process exits non-zero.
    """

    name: str

    async def run(self, ready: Callable[[], None]) -> None: ...


class Uplink(Protocol):
    """Store-and-forward to the county. Implemented by agent.outbox.Outbox."""

    async def send(
        self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None
    ) -> Envelope:
        """Return once the message is durably committed (it will reach the county).

        Raises agent.outbox.OutboxRefused when the outbox is full and the class may be refused
        (telemetry, event), agent.outbox.OutboxError when the store cannot take it at all.
        """
        ...

    def send_nowait(
        self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None
    ) -> asyncio.Future[Envelope]:
        """Queue for the next group commit; the future resolves when durable. For bursts."""
        ...


TopicCallback = Callable[[bytes, bool, float], None]  # payload, retained, arrival (monotonic s); paho's thread


class TopicListener(Protocol):
    """QoS 0 messages of a topic on the box's own broker connection (agent.link.Link): live audio."""

    def listen(self, topic: str, on_message: TopicCallback) -> None: ...

    def unlisten(self, topic: str) -> None: ...


@dataclass(frozen=True, slots=True)
class InboundCommand:
    """A message that arrived on one of this box's cmd topics, not yet verified."""

    topic: str
    payload: bytes
    retained: bool
    received_at: float  # wall clock, epoch s


class CommandSink(Protocol):
    async def on_command(self, msg: InboundCommand) -> None: ...
