"""`[cameras]` and `[[camera]]` config sections (owned by the cameras feature)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.schema import positive


@dataclass(frozen=True, slots=True)
class CamerasConfig:
    interval_s: float = field(default=60.0, metadata={"check": positive})


@dataclass(frozen=True, slots=True)
class CameraConfig:
    id: str
    rtsp: str
    credentials: Path | None = None
