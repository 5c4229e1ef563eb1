"""`[update]`: where releases live and how updates and remote configuration are judged (docs/updates.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.i18n import N_
from agent.schema import SchemaError, at_least_one, positive


def _https_base(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("https://") or len(value) > 512 or any(c in value for c in " \t\r\n\"'"):
        raise ValueError(N_("must be an https:// URL (the county server that serves releases)"))
    return value.rstrip("/") + "/"


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    # the release root: releases/<version>/ (venvs), `current` and `previous` links, update/ (trial, overlay)
    root: Path = Path("/opt/village-agent")
    # releases are fetched from under this URL only (https, the box's client certificate); unset = updates off
    server: str | None = field(default=None, metadata={"check": _https_base})
    ca: Path | None = None  # CA of the release server; default: [mqtt] ca
    # 4G plans: 32 KiB/s moves a 10 MB release in about 5 minutes and at most 2.7 GB in a day
    max_rate_bytes_s: int = field(default=32 * 1024, metadata={"check": positive})
    health_timeout_s: float = field(default=300.0, metadata={"check": positive})  # READY + broker, or roll back
    healthy_after_s: float = field(default=10.0, metadata={"check": positive})  # connected this long = healthy
    max_boots: int = field(default=3, metadata={"check": at_least_one})  # starts of a trial before rolling back
    keep_previous_s: float = field(default=86400.0, metadata={"check": positive})
    min_free_mb: int = field(default=64, metadata={"check": positive})  # kept free beyond the download
    python: Path = Path("/usr/bin/python3")  # the interpreter new slots are made with
    # `config.set_mqtt` (the broker list) is refused unless this is true in the box's own file
    allow_remote_mqtt: bool = False

    def __post_init__(self) -> None:
        if self.healthy_after_s >= self.health_timeout_s:
            raise SchemaError("healthy_after_s", N_("must be shorter than health_timeout_s"))
