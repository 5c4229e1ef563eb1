"""`[[gateway]]`, `[[wearer]]` and `[wearables]` config sections (owned by the wearables feature)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    id: str
    url: str
    codec: Literal["watch", "ingics", "nmea"]


@dataclass(frozen=True, slots=True)
class WearerConfig:
    id: str
    device: str


@dataclass(frozen=True, slots=True)
class WearablesConfig:
    pass
