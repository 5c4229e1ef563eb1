"""Downlink command payloads (contract section 5), after the JWS signature has been verified."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COMMAND_VERSION = 1

RECEIPT_STATES = frozenset({
    "received", "rejected", "scheduled", "started", "finished", "failed",
    "cancelled", "preempted", "expired", "applied",
})


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    kind: str  # "broadcast.play", "broadcast.cancel", "geofence.set", ...
    iat: int
    exp: int
    to: tuple[str, ...]  # "box:ID" / "group:NAME"
    data: dict[str, Any]
    kid: str  # the key that signed it
