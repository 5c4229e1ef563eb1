"""What the camera feature needs from the network, as Protocols, and the records the probes return.

The real implementations are plain network code in this package (probe.py, onvif.py, grab.py,
link.py); the twins in sim/cameras.py stand in where a real camera cannot exist. agent/cameras
depends only on these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class CameraDriverError(Exception):
    """Base of the camera drivers' errors."""


class CredentialsError(CameraDriverError):
    """A credentials file that cannot be used. The message never contains its content."""


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=***)"

    @classmethod
    def parse(cls, text: str) -> Credentials:
        line = text.strip("\r\n")
        user, sep, password = line.partition(":")
        if not sep or not user or "\n" in line:
            raise CredentialsError('expected one line "user:password"')
        return cls(user, password)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"cannot read {path}: {type(exc).__name__}") from None
        try:
            return cls.parse(text)
        except CredentialsError as exc:
            raise CredentialsError(f"{path}: {exc}") from None


class ProbeOutcome(StrEnum):
    OK = "ok"  # DESCRIBE answered 200 with a video stream in the SDP
    UNREACHABLE = "unreachable"  # connection refused, no route, host down
    TIMEOUT = "timeout"  # connect or an answer took longer than its timeout (a hung camera)
    AUTH_FAILED = "auth_failed"  # 401 after we answered the challenge: wrong credentials
    AUTH_REQUIRED = "auth_required"  # 401 and we sent no credentials (none configured, or held back)
    NOT_FOUND = "not_found"  # 404: wrong stream path
    NO_VIDEO = "no_video"  # 200 but the SDP has no video
    PROTOCOL_ERROR = "protocol_error"  # the peer does not speak RTSP
    ERROR = "error"  # any other status

    @property
    def network_failure(self) -> bool:
        return self in (ProbeOutcome.UNREACHABLE, ProbeOutcome.TIMEOUT)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    outcome: ProbeOutcome
    step: str  # connect | options | describe | auth
    status: int | None = None
    detail: str = ""  # short, human, never holds credentials
    elapsed_s: float = 0.0


class RtspProber(Protocol):
    async def probe(self, url: str, creds: Credentials | None, *, send_credentials: bool = True) -> ProbeResult:
        """TCP connect -> OPTIONS -> DESCRIBE (answering one auth challenge), then close. Never raises
        for anything the camera does: every failure is a ProbeResult. `send_credentials=False` probes
        without ever sending a password (used while a credential is held back after a 401)."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    manufacturer: str = ""
    model: str = ""
    firmware: str = ""
    serial: str = ""
    hardware: str = ""
    uptime_s: float | None = None  # not part of standard ONVIF; set when the camera reports it


class OnvifError(CameraDriverError):
    """An ONVIF call that did not give an answer."""


class OnvifUnreachable(OnvifError):
    """No HTTP answer (refused, timeout, not HTTP)."""


class OnvifAuthError(OnvifError):
    """The camera refused our WS-UsernameToken."""


class OnvifFault(OnvifError):
    """An HTTP or SOAP fault other than authentication, or a body we cannot read."""


class OnvifClient(Protocol):
    async def system_time(self, host: str, port: int) -> float:
        """The camera's clock as UTC epoch seconds (GetSystemDateAndTime, no auth)."""
        ...

    async def device_info(self, host: str, port: int, creds: Credentials | None, *, skew_s: float = 0.0) -> DeviceInfo:
        """GetDeviceInformation with a WS-UsernameToken digest; `skew_s` is camera minus our clock."""
        ...


@dataclass(frozen=True, slots=True)
class Frame:
    """One grabbed picture: a small grey thumbnail of the analysed region (clock band cropped off)."""

    width: int
    height: int
    pixels: bytes = field(repr=False)


class GrabError(CameraDriverError):
    """No frame: ffmpeg failed or timed out. The message is redacted."""


class GrabUnavailable(GrabError):
    """The grabber itself cannot run here (ffmpeg missing): says nothing about the camera."""


class FrameGrabber(Protocol):
    async def grab(self, url: str, creds: Credentials | None) -> Frame: ...


class LinkCheck(Protocol):
    def lan_up(self, hosts: Sequence[str]) -> bool | None:
        """False when the box's own LAN towards `hosts` is down (no route or no carrier), None if unknown."""
        ...


@dataclass(slots=True)
class CameraProbes:
    """Everything the camera service uses to look at cameras; agent.hardware may supply twins."""

    rtsp: RtspProber
    onvif: OnvifClient
    grabber: FrameGrabber
    link: LinkCheck
