"""`[broadcast]` config section (owned by the broadcast feature)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BroadcastConfig:
    # quiet hours as local "HH:MM" start and end; empty = none
    quiet_hours: tuple[str, ...] = ()
    timezone: str = "Asia/Shanghai"
