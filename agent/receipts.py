"""`cmd` receipts (contract section 4): one helper so every feature words them the same way.

A receipt's `detail` is a human sentence that may quote text from the wire; it is always escaped and
bounded here (agent.protocol.text.escape), whichever feature wrote it."""

from __future__ import annotations

from typing import Any

from agent.clock import Clock, now_ms
from agent.protocol.commands import RECEIPT_STATES
from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.text import escape
from agent.service import Uplink


class Receipts:
    def __init__(self, uplink: Uplink, clock: Clock) -> None:
        self._uplink = uplink
        self._clock = clock

    @property
    def uplink(self) -> Uplink:
        return self._uplink

    async def send(self, cmd_id: str | None, state: str, *, reason: str | None = None,
                   **extra: Any) -> Envelope:
        if state not in RECEIPT_STATES:
            raise ValueError(f"not a receipt state: {state!r}")
        data: dict[str, Any] = {"cmd": cmd_id, "state": state}
        if reason is not None:
            data["reason"] = reason
        data.update(extra)
        if isinstance(data.get("detail"), str):
            data["detail"] = escape(data["detail"])  # details may quote wire text: printable and bounded
        return await self._uplink.send(MsgClass.RECEIPT, "cmd", data, now_ms(self._clock))
