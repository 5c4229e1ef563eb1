"""Hardware profiles (firmware_cfg/*.toml): pins, ports and devices of one box model.

A profile may `extends = "base"`; tables merge key by key, the child winning. The merged document is
validated into a frozen HardwareProfile: unknown keys are errors, like the config.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.schema import SchemaError, build

PROFILE_DIR_ENV = "VILLAGE_PROFILE_DIR"
SOURCE_PROFILE_DIR = Path(__file__).resolve().parent.parent / "firmware_cfg"
SYSTEM_PROFILE_DIR = Path("/etc/village-agent/profiles")


class ProfileError(ValueError):
    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


@dataclass(frozen=True, slots=True)
class RelayProfile:
    pin: int | None = None  # BCM number; None = no relay on this box
    active_high: bool = True


@dataclass(frozen=True, slots=True)
class AudioProfile:
    device: str = "default"  # ALSA PCM name
    mixer: str | None = None  # ALSA mixer control for volume


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    name: str
    description: str = ""
    kind: str = "sim"  # "sim" builds the twins from sim/, anything else the real drivers
    relay: RelayProfile = field(default_factory=RelayProfile)
    audio: AudioProfile = field(default_factory=AudioProfile)


def profile_dirs() -> list[Path]:
    dirs = []
    if env := os.environ.get(PROFILE_DIR_ENV):
        dirs.append(Path(env))
    dirs += [SYSTEM_PROFILE_DIR, SOURCE_PROFILE_DIR]
    return dirs


def find_profile(name: str) -> Path:
    if "/" in name or name.endswith(".toml"):
        path = Path(name)
        if path.is_file():
            return path
        raise ProfileError(name, "", "profile file does not exist")
    for d in profile_dirs():
        path = d / f"{name}.toml"
        if path.is_file():
            return path
    raise ProfileError(name, "", f"no profile named {name!r} in {', '.join(map(str, profile_dirs()))}")


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ProfileError(path, "extends", "profiles extend each other in a loop")
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(path, "", f"cannot read: {exc}") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ProfileError(path, "extends", "must be a profile name")
    parent_path = path.parent / f"{parent}.toml" if "/" not in parent else Path(parent)
    if not parent_path.is_file():
        parent_path = find_profile(parent)
    return _merge(_load_raw(parent_path, (*seen, path)), raw)


def load_profile(name: str) -> HardwareProfile:
    path = find_profile(name)
    raw = _load_raw(path)
    raw.setdefault("name", path.stem)
    try:
        return build(HardwareProfile, raw)
    except SchemaError as exc:
        raise ProfileError(path, exc.key, exc.problem) from None
