"""The agent's configuration: one TOML file (contract section 2), validated once into frozen objects.

Defaults live here and only here; call sites read attributes, never `.get(key, default)`.
Feature sections are defined next to their feature (agent/*/settings.py) and assembled below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from agent.broadcast.settings import BroadcastConfig
from agent.cameras.settings import CameraConfig, CamerasConfig
from agent.i18n import N_
from agent.protocol.broker import parse_broker_url, redact_url
from agent.protocol.topics import BOX_ID_RE, DEFAULT_PREFIX
from agent.schema import SchemaError, build, dump, positive, read_toml
from agent.update.remote import with_overlay
from agent.update.settings import UpdateConfig
from agent.uplink_settings import UplinkConfig
from agent.wearables.settings import GatewayConfig, WearablesConfig, WearerConfig


class ConfigError(Exception):
    """A config file that cannot be used. `str()` is the one line a technician sees."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(N_("{file}: {key}: {problem}", file=self.file, key=key, problem=problem) if key
                         else N_("{file}: {problem}", file=self.file, problem=problem))


def _box_id(value: str) -> str:
    if not BOX_ID_RE.match(value):
        raise ValueError(N_("{value!r} is not [A-Za-z0-9_-]{{1,64}}", value=value))
    return value


def _groups(value: tuple[str, ...]) -> tuple[str, ...]:
    for g in value:
        _box_id(g)
    return value


def _profile_name(value: str) -> str:
    if not value:
        raise ValueError(N_("a hardware profile name (pi4-relayhat, pizero2w-ble, ...; sim for the simulator)"))
    return value


def _broker_url(value: str) -> str:
    parse_broker_url(value)
    return value


def _broker_urls(value: str | tuple[str, ...]) -> tuple[str, ...]:
    urls = (value,) if isinstance(value, str) else value
    if not urls:
        raise ValueError(N_("needs at least one broker URL"))
    return tuple(_broker_url(u) for u in urls)


def readable_file(value: Path) -> Path:
    try:
        exists = value.is_file()
    except OSError as exc:  # a name too long for the filesystem, ...
        raise ValueError(N_("file {value!r}: {strerror}", value=str(value)[:80], strerror=exc.strerror)) from None
    if not exists:
        raise ValueError(N_("file {value!r} does not exist", value=str(value)))
    if not os.access(value, os.R_OK):
        raise ValueError(N_("file {value!r} is not readable", value=str(value)))
    return value


@dataclass(frozen=True, slots=True)
class BoxConfig:
    id: str = field(metadata={"check": _box_id})
    # the hardware profile (firmware_cfg/*.toml): required, never defaulted. A default would be a guess
    # at the box model, and a wrong guess drives the wrong pins (or, as "sim" once did, no pins at all)
    # while everything reports healthy.
    profile: str = field(metadata={"check": _profile_name})
    groups: tuple[str, ...] = field(default=(), metadata={"check": _groups})
    state_dir: Path = Path("/var/lib/village-agent")
    # 4G (issue 14, docs/data-budget.md): under the county reports' 5-minute online slot even when batched
    heartbeat_s: float = field(default=240.0, metadata={"check": positive})


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str | tuple[str, ...] = field(
        metadata={"check": _broker_urls, "redact": lambda urls: tuple(redact_url(u) for u in urls)}
    )
    ca: Path | None = field(default=None, metadata={"check": readable_file})
    cert: Path | None = field(default=None, metadata={"check": readable_file})
    key: Path | None = field(default=None, metadata={"check": readable_file})
    username: str | None = None
    password_file: Path | None = field(default=None, metadata={"check": readable_file})
    topic_prefix: str = DEFAULT_PREFIX
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive_s: int = field(default=300, metadata={"check": positive})  # 4G: see docs/data-budget.md
    connect_timeout_s: float = field(default=10.0, metadata={"check": positive})
    session_expiry_s: int = field(default=7 * 24 * 3600, metadata={"check": positive})
    inflight: int = field(default=1000, metadata={"check": positive})
    backoff_min_s: float = field(default=1.0, metadata={"check": positive})
    backoff_max_s: float = field(default=300.0, metadata={"check": positive})

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise SchemaError("cert", N_("cert and key go together (mutual TLS needs both)"))
        if self.backoff_max_s < self.backoff_min_s:
            raise SchemaError("backoff_max_s", N_("must be >= backoff_min_s"))


@dataclass(frozen=True, slots=True)
class TrustConfig:
    keys: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))  # read-only mapping
    # release signing keys (docs/updates.md): a separate set, never used for commands, nor keys for releases
    release_keys: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name, table in (("keys", self.keys), ("release_keys", self.release_keys)):
            for kid, path in table.items():
                try:
                    readable_file(path)
                except ValueError as exc:
                    raise SchemaError(f"{name}.{kid}", str(exc)) from None


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_bytes: int = field(default=256 * 1024 * 1024, metadata={"check": positive})
    telemetry_ttl_s: float = field(default=7 * 24 * 3600.0, metadata={"check": positive})
    commit_interval_ms: float = field(default=20.0, metadata={"check": positive})
    max_file_bytes: int | None = field(default=None, metadata={"check": positive})  # hard cap on the db file
    file: str = "outbox.db"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class Config:
    box: BoxConfig
    mqtt: MqttConfig
    trust: TrustConfig = field(default_factory=TrustConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    log: LogConfig = field(default_factory=LogConfig)
    broadcast: BroadcastConfig = field(default_factory=BroadcastConfig)
    wearables: WearablesConfig = field(default_factory=WearablesConfig)
    gateways: tuple[GatewayConfig, ...] = field(default=(), metadata={"key": "gateway"})
    wearers: tuple[WearerConfig, ...] = field(default=(), metadata={"key": "wearer"})
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    camera_list: tuple[CameraConfig, ...] = field(default=(), metadata={"key": "camera"})
    update: UpdateConfig = field(default_factory=UpdateConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)

    def __post_init__(self) -> None:
        ids = (("gateway", [g.id for g in self.gateways]), ("wearer", [w.id for w in self.wearers]),
               ("camera", [c.id for c in self.camera_list]))
        for name, items in ids:
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item in seen:
                    raise SchemaError(f"{name}[{i}].id", N_("duplicate id {item!r}", item=item))
                seen.add(item)

    @property
    def outbox_path(self) -> Path:
        return self.box.state_dir / self.outbox.file


def parse_config(raw: dict[str, Any], source: Path | str = "<config>") -> Config:
    try:
        return build(Config, raw)
    except SchemaError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        raw = read_toml(path)
    except SchemaError as exc:
        raise ConfigError(path, exc.key, exc.problem) from None
    # what the county set remotely (config.set, docs/updates.md) is merged over the file, never written into it
    return parse_config(with_overlay(raw), path)


def masked(config: Config) -> dict[str, Any]:
    """The resolved config as plain data with secrets masked: what `village agent check` prints."""
    return dump(config, mask=True)
