"""Hardware profiles (firmware_cfg/*.toml): pins, ports and devices of one box model.

A profile may `extends = "base"` (a name, or a path); tables merge key by key, the child winning, lists
are replaced whole. The merged document is validated into a frozen HardwareProfile: unknown keys are
errors, like the config. A profile's name is its file name without `.toml`.

Where names are looked up, first hit wins:
  $VILLAGE_PROFILE_DIR            tests and one-off experiments
  /etc/village-agent/profiles     local profiles a technician adds (extend a shipped one, don't edit it)
  /opt/village-agent/profiles     profiles shipped by scripts/install-box (overwritten on upgrade)
  <source tree>/firmware_cfg      a development checkout
A parent is looked up next to the child first, then by name as above.

`[serial]` is the box model's wired wristband gateway port: `url` is the default of a `[[gateway]]` that
gives none (agent.wearables.settings.resolve_gateways), `baud` the speed of every wired gateway.
`[gateway_firmware]` holds what the agent writes to every wired (not `ble:`) gateway at each connect, in
order (agent/wearables/service.py, drivers/wristband/setup.py). Each entry of `commands` is either
  - a text line: printable ASCII (0x20-0x7e), sent as is followed by `line_ending`, or
  - raw bytes: "hex:" then pairs of hex digits (spaces allowed), sent exactly, no line ending.
After each entry the writer waits up to `reply_timeout_s` for a reply line starting with `expect`
("" = do not wait); a line starting with ERROR refuses it. `GatewayFirmwareProfile.frames()` gives the
exact bytes to write.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.i18n import N_
from agent.schema import SchemaError, build, non_negative

PROFILE_DIR_ENV = "VILLAGE_PROFILE_DIR"
SOURCE_PROFILE_DIR = Path(__file__).resolve().parent.parent / "firmware_cfg"
SYSTEM_PROFILE_DIR = Path("/etc/village-agent/profiles")
INSTALLED_PROFILE_DIR = Path("/opt/village-agent/profiles")

MAX_BCM_PIN = 27  # the 40-pin header exposes BCM 0..27 on every Pi model we ship
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
MAX_FIRMWARE_COMMANDS = 64
MAX_FIRMWARE_COMMAND_BYTES = 256
LINE_ENDINGS = {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r", "none": b""}
_HCI_RE = re.compile(r"^hci[0-9]{1,2}\Z")


class ProfileError(ValueError):
    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(N_("{file}: {key}: {problem}", file=self.file, key=key, problem=problem) if key
                         else N_("{file}: {problem}", file=self.file, problem=problem))


def _bcm_pin(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_BCM_PIN:
        raise ValueError(N_("BCM pin must be 0..{max_bcm_pin}, got {value}", max_bcm_pin=MAX_BCM_PIN, value=value))
    return value


def _baud(value: int) -> int:
    if value not in BAUD_RATES:
        raise ValueError(N_("must be one of {choices}, got {value}",
                            choices=", ".join(map(str, BAUD_RATES)), value=value))
    return value


def _serial_url(value: str | None) -> str | None:
    # pyserial URLs: a device path or scheme://... (socket://, rfc2217://, loop://, spy://)
    if value is not None and not (value.startswith("/dev/") or re.match(r"^[a-z0-9]+://", value)):
        raise ValueError(N_("{value!r} is neither a /dev/ path nor a pyserial URL (socket://host:port, ...)",
                            value=value))
    return value


def _hci(value: str | None) -> str | None:
    if value is not None and not _HCI_RE.match(value):
        raise ValueError(N_("BLE adapter must look like 'hci0', got {value!r}", value=value))
    return value


def encode_firmware_command(entry: str) -> bytes:
    """One `[gateway_firmware].commands` entry -> its bytes, without the line ending. ValueError if bad."""
    if entry.startswith("hex:"):
        digits = entry[4:].replace(" ", "")
        if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
            raise ValueError(N_("{entry!r}: after 'hex:' come pairs of hex digits", entry=entry))
        data = bytes.fromhex(digits)
    else:
        if not entry or any(not 0x20 <= ord(c) <= 0x7E for c in entry):
            raise ValueError(N_("{entry!r}: a text command is non-empty printable ASCII (use 'hex:' for bytes)",
                                entry=entry))
        data = entry.encode("ascii")
    if len(data) > MAX_FIRMWARE_COMMAND_BYTES:
        raise ValueError(N_("{entry!r}...: longer than {limit} bytes",
                            entry=entry[:20], limit=MAX_FIRMWARE_COMMAND_BYTES))
    return data


def _firmware_commands(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(value) > MAX_FIRMWARE_COMMANDS:
        raise ValueError(N_("at most {max_firmware_commands} commands, got {value}",
                            max_firmware_commands=MAX_FIRMWARE_COMMANDS, value=len(value)))
    for entry in value:
        encode_firmware_command(entry)
    return value


@dataclass(frozen=True, slots=True)
class RelayProfile:
    pin: int | None = field(default=None, metadata={"check": _bcm_pin})  # BCM number; None = no relay
    active_high: bool = True


@dataclass(frozen=True, slots=True)
class AudioProfile:
    device: str = "default"  # ALSA PCM name
    mixer: str | None = None  # ALSA mixer control for volume


@dataclass(frozen=True, slots=True)
class SerialProfile:
    url: str | None = field(default=None, metadata={"check": _serial_url})  # None = no wired gateway
    baud: int = field(default=9600, metadata={"check": _baud})


@dataclass(frozen=True, slots=True)
class BleProfile:
    adapter: str | None = field(default=None, metadata={"check": _hci})  # None = no BLE radio used


@dataclass(frozen=True, slots=True)
class StatusLedProfile:
    pin: int | None = field(default=None, metadata={"check": _bcm_pin})  # BCM number; None = no LED
    active_high: bool = True


@dataclass(frozen=True, slots=True)
class GatewayFirmwareProfile:
    commands: tuple[str, ...] = field(default=(), metadata={"check": _firmware_commands})
    line_ending: Literal["crlf", "lf", "cr", "none"] = "crlf"
    expect: str = "OK"
    reply_timeout_s: float = field(default=2.0, metadata={"check": non_negative})

    def frames(self) -> tuple[bytes, ...]:
        """The exact bytes to write, one item per command, in order."""
        end = LINE_ENDINGS[self.line_ending]
        return tuple(
            encode_firmware_command(c) + (b"" if c.startswith("hex:") else end) for c in self.commands
        )


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    name: str
    # required, never defaulted: "pi" builds the real drivers, "sim" takes the simulator's twins (which
    # only the simulator provides: agent.hardware). A profile that forgets it must not become a twin box.
    kind: Literal["pi", "sim"]
    description: str = ""
    relay: RelayProfile = field(default_factory=RelayProfile)
    audio: AudioProfile = field(default_factory=AudioProfile)
    serial: SerialProfile = field(default_factory=SerialProfile)
    ble: BleProfile = field(default_factory=BleProfile)
    status_led: StatusLedProfile = field(default_factory=StatusLedProfile)
    gateway_firmware: GatewayFirmwareProfile = field(default_factory=GatewayFirmwareProfile)

    def __post_init__(self) -> None:
        if self.relay.pin is not None and self.relay.pin == self.status_led.pin:
            raise SchemaError("status_led.pin", N_("BCM {pin} is already the relay pin", pin=self.relay.pin))


def profile_dirs() -> list[Path]:
    dirs = []
    if env := os.environ.get(PROFILE_DIR_ENV):
        dirs.append(Path(env))
    dirs += [SYSTEM_PROFILE_DIR, INSTALLED_PROFILE_DIR, SOURCE_PROFILE_DIR]
    return dirs


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the filesystem: no such profile
        return False


def _is_path(name: str) -> bool:
    return "/" in name or name.endswith(".toml")


def find_profile(name: str) -> Path:
    if _is_path(name):
        path = Path(name)
        if _is_file(path):
            return path
        raise ProfileError(name, "", N_("profile file does not exist"))
    for d in profile_dirs():
        path = d / f"{name}.toml"
        if _is_file(path):
            return path
    raise ProfileError(name, "", N_("no profile named {name!r} in {dirs}",
                                    name=name, dirs=", ".join(map(str, profile_dirs()))))


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _find_parent(child: Path, parent: str) -> Path:
    if _is_path(parent):
        path = Path(parent) if Path(parent).is_absolute() else child.parent / parent
        if _is_file(path):
            return path
        raise ProfileError(child, "extends", N_("parent profile file {path!r} does not exist", path=str(path)))
    beside = child.parent / f"{parent}.toml"
    if _is_file(beside):
        return beside
    try:
        return find_profile(parent)
    except ProfileError:
        raise ProfileError(child, "extends", N_("parent profile {parent!r} not found", parent=parent)) from None


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    real = path.resolve()
    if real in seen:
        chain = " -> ".join(p.stem for p in (*seen, real))
        raise ProfileError(path, "extends", N_("profiles extend each other in a loop ({chain})", chain=chain))
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(path, "", N_("cannot read: {exc}", exc=exc)) from None
    except RecursionError:  # tomllib recurses per nesting level
        raise ProfileError(path, "", N_("cannot read: TOML nested too deeply")) from None
    if "name" in raw:
        raise ProfileError(path, "name", N_("a profile's name is its file name; remove this key"))
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise ProfileError(path, "extends", N_("must be a profile name or a path to a .toml file"))
    return _merge(_load_raw(_find_parent(path, parent), (*seen, real)), raw)


def load_profile(name: str) -> HardwareProfile:
    path = find_profile(name)
    raw = _load_raw(path)
    if "kind" not in raw:  # never a default: a forgotten kind must not turn a real box into a twin box
        raise ProfileError(path, "kind", N_('missing (required): "pi" for a real box, "sim" for the simulator '
                                         '(or extends = "base", which is "pi")'))
    raw["name"] = path.stem
    try:
        return build(HardwareProfile, raw)
    except SchemaError as exc:
        raise ProfileError(path, exc.key, exc.problem) from None
