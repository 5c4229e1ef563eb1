"""`[cameras]` and `[[camera]]` config sections (owned by the cameras feature).

Defaults live here only; docs/cameras.md lists every key. The credentials file must be readable only
by the agent (mode 0600 or stricter) and hold one line "user:password"; its content is never printed.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent.i18n import N_
from agent.schema import SchemaError, at_least_one, non_negative, positive

CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z: "$" also matches before a final "\n"


def _camera_id(value: str) -> str:
    if not CAMERA_ID_RE.match(value):
        raise ValueError(N_("{value!r} is not [A-Za-z0-9_-]{{1,64}} (a GB/T 28181 code is 20 digits)", value=value))
    return value


def _rtsp_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("rtsp", "rtsps"):
        raise ValueError(N_("must be an rtsp:// URL"))
    if "@" in parts.netloc:
        raise ValueError(N_("must not hold credentials (put them in the `credentials` file)"))
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(N_("bad port")) from None
    if not parts.hostname:
        raise ValueError(N_("no host"))
    return value


def _port(value: int | None) -> int | None:
    if value is not None and not 0 < value < 65536:
        raise ValueError(N_("not a port: {value}", value=value))
    return value


def _fraction(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(N_("must be in [0, 1), got {value}", value=value))
    return value


def _grab_concurrency(value: int) -> int:
    if value not in (1, 2):
        raise ValueError(N_("must be 1 or 2 (ffmpeg processes at once), got {value}", value=value))
    return value


def secret_file(value: Path) -> Path:
    """A credentials file: exists, readable, mode 0600 or stricter, one line "user:password"."""
    try:
        st = value.stat()
    except OSError:
        raise ValueError(N_("file {value!r} does not exist", value=str(value))) from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(N_("{value!r} is not a file", value=str(value)))
    if st.st_mode & 0o077:
        raise ValueError(N_("{value!r} has mode {value2:04o}; must be 0600 or stricter",
                            value=str(value), value2=stat.S_IMODE(st.st_mode)))
    if not os.access(value, os.R_OK):
        raise ValueError(N_("file {value!r} is not readable", value=str(value)))
    try:
        text = value.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        raise ValueError(N_("file {value!r} cannot be read as UTF-8", value=str(value))) from None
    user, sep, _ = text.strip("\r\n").partition(":")
    if not sep or not user or "\n" in text.strip("\r\n"):
        raise ValueError(N_('{value!r} must hold one line "user:password"', value=str(value)))
    return value


@dataclass(frozen=True, slots=True)
class CamerasConfig:
    interval_s: float = field(default=60.0, metadata={"check": positive})  # probe cycle
    spread: float = field(default=0.8, metadata={"check": _fraction})  # share of the cycle probes spread over
    concurrency: int = field(default=8, metadata={"check": at_least_one})  # RTSP probes at once
    connect_timeout_s: float = field(default=3.0, metadata={"check": positive})
    step_timeout_s: float = field(default=5.0, metadata={"check": positive})  # per RTSP request
    offline_after: int = field(default=3, metadata={"check": at_least_one})  # failed cycles (+1 confirm)
    online_after: int = field(default=2, metadata={"check": at_least_one})  # good cycles
    auth_holdoff_s: float = field(default=3600.0, metadata={"check": non_negative})  # after a 401
    onvif_interval_s: float = field(default=720.0, metadata={"check": positive})  # clock skew
    device_info_interval_s: float = field(default=3600.0, metadata={"check": positive})  # serial/firmware
    onvif_timeout_s: float = field(default=5.0, metadata={"check": positive})
    frame_interval_s: float = field(default=1200.0, metadata={"check": positive})  # routine frame grab
    grab_timeout_s: float = field(default=15.0, metadata={"check": positive})
    grab_concurrency: int = field(default=1, metadata={"check": _grab_concurrency})
    grabs_per_cycle: int = field(default=10, metadata={"check": at_least_one})  # frame grabs started per cycle
    crop_top: float = field(default=0.12, metadata={"check": _fraction})  # burned-in clock band
    crop_bottom: float = field(default=0.12, metadata={"check": _fraction})  # channel name band
    black_luma: float = field(default=24.0, metadata={"check": non_negative})
    frozen_diff: float = field(default=0.5, metadata={"check": non_negative})
    telemetry_s: float = field(default=900.0, metadata={"check": positive})  # `cameras` telemetry period
    state_file: str = "cameras.json"  # in box.state_dir: last known states, for honest restarts

    def __post_init__(self) -> None:
        if self.crop_top + self.crop_bottom >= 0.9:
            raise SchemaError("crop_bottom", N_("crop_top + crop_bottom must leave at least 10% of the picture"))


@dataclass(frozen=True, slots=True)
class CameraConfig:
    id: str = field(metadata={"check": _camera_id})
    rtsp: str = field(metadata={"check": _rtsp_url})  # the sub-stream; no credentials here
    credentials: Path | None = field(default=None, metadata={"check": secret_file})
    host: str | None = None  # ONVIF host when it differs from the RTSP URL's host
    onvif_port: int | None = field(default=None, metadata={"check": _port})  # None: no ONVIF checks
    frame_check: bool = True  # false for scenes that are legitimately black/still (night, empty corridor)
    maintenance: bool = False  # not probed; reported as `maintenance`
    name: str = ""  # for people; never used as a key

    @property
    def onvif_host(self) -> str:
        return self.host or urlsplit(self.rtsp).hostname or ""
