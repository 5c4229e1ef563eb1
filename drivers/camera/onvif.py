"""ONVIF device service: GetSystemDateAndTime (no auth) and GetDeviceInformation (WS-UsernameToken).

Two fixed SOAP 1.2 requests over HTTP/1.1 with `Connection: close`. The HTTP exchange is written by
hand (about 60 lines below) rather than adding an HTTP client dependency: one POST, one answer, a size
limit, a timeout and chunked decoding are all a probe needs, and it stays cancellable on the loop.

`uptime_s` is not in the ONVIF standard. Some firmwares add an uptime element to the device
information answer (any element whose local name is Uptime/UpTime/SystemUptime, seconds or an
xs:duration); when present it is used for reboot detection, otherwise it stays None.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from drivers.camera.base import (
    Credentials,
    DeviceInfo,
    OnvifAuthError,
    OnvifFault,
    OnvifUnreachable,
)

DEVICE_PATH = "/onvif/device_service"
MAX_RESPONSE_BYTES = 256 * 1024

_ENV = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"'
    ' xmlns:tds="http://www.onvif.org/ver10/device/wsdl">{header}<s:Body>{body}</s:Body></s:Envelope>'
)
_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_DIGEST = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest"
_B64 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"


def system_time_request() -> bytes:
    return _ENV.format(header="", body="<tds:GetSystemDateAndTime/>").encode()


def username_token(creds: Credentials, created: datetime, nonce: bytes) -> str:
    """WS-Security UsernameToken with PasswordDigest = Base64(SHA1(nonce + created + password))."""
    stamp = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = base64.b64encode(hashlib.sha1(nonce + stamp.encode() + creds.password.encode()).digest()).decode()
    return (
        f'<s:Header><wsse:Security xmlns:wsse="{_WSSE}" xmlns:wsu="{_WSU}" s:mustUnderstand="1">'
        f"<wsse:UsernameToken><wsse:Username>{_esc(creds.user)}</wsse:Username>"
        f'<wsse:Password Type="{_DIGEST}">{digest}</wsse:Password>'
        f'<wsse:Nonce EncodingType="{_B64}">{base64.b64encode(nonce).decode()}</wsse:Nonce>'
        f"<wsu:Created>{stamp}</wsu:Created></wsse:UsernameToken></wsse:Security></s:Header>"
    )


def device_info_request(creds: Credentials | None, created: datetime, nonce: bytes) -> bytes:
    header = username_token(creds, created, nonce) if creds is not None else ""
    return _ENV.format(header=header, body="<tds:GetDeviceInformation/>").encode()


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, name: str) -> ET.Element | None:
    for el in root.iter():
        if _local(el.tag) == name:
            return el
    return None


def _parse_xml(body: bytes) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise OnvifFault(f"answer is not XML: {exc}") from None


def parse_system_time(body: bytes) -> float:
    """UTC epoch seconds from a GetSystemDateAndTimeResponse."""
    root = _parse_xml(body)
    utc = _find(root, "UTCDateTime")
    if utc is None:
        raise OnvifFault("no UTCDateTime in the answer (camera keeps only local time)")
    date, time_ = _find(utc, "Date"), _find(utc, "Time")
    try:
        year, month, day = (int(_text(date, k)) for k in ("Year", "Month", "Day"))
        hour, minute, second = (int(_text(time_, k)) for k in ("Hour", "Minute", "Second"))
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except (ValueError, TypeError) as exc:
        raise OnvifFault(f"bad UTCDateTime: {exc}") from None


def _text(el: ET.Element | None, name: str) -> str:
    if el is None:
        raise ValueError("missing element")
    child = _find(el, name)
    if child is None or child.text is None:
        raise ValueError(f"missing {name}")
    return child.text.strip()


_DURATION_RE = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?\Z")


def _uptime(text: str) -> float | None:
    text = text.strip()
    with contextlib.suppress(ValueError):
        return float(text)
    m = _DURATION_RE.match(text)
    if not m or text == "P":
        return None
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


def parse_device_info(body: bytes) -> DeviceInfo:
    root = _parse_xml(body)
    if _find(root, "Fault") is not None:
        raise_fault(root)
    resp = _find(root, "GetDeviceInformationResponse")
    if resp is None:
        raise OnvifFault("no GetDeviceInformationResponse in the answer")
    values = {_local(el.tag): (el.text or "").strip() for el in resp.iter()}
    uptime = None
    for name in ("Uptime", "UpTime", "SystemUptime"):
        if name in values:
            uptime = _uptime(values[name])
            break
    return DeviceInfo(
        manufacturer=values.get("Manufacturer", ""),
        model=values.get("Model", ""),
        firmware=values.get("FirmwareVersion", ""),
        serial=values.get("SerialNumber", ""),
        hardware=values.get("HardwareId", ""),
        uptime_s=uptime,
    )


def raise_fault(root: ET.Element) -> None:
    text = " ".join(
        (el.text or "").strip() for el in root.iter() if _local(el.tag) in ("Value", "Text") and el.text
    )
    if "NotAuthorized" in text or "FailedAuthentication" in text or ("Sender" in text and "auth" in text.lower()):
        raise OnvifAuthError("camera refused the credentials")
    raise OnvifFault(f"SOAP fault: {text[:120]}")


class HttpOnvifClient:
    """The real ONVIF client. Satisfies drivers.camera.base.OnvifClient."""

    def __init__(self, *, timeout_s: float = 5.0, path: str = DEVICE_PATH) -> None:
        self.timeout_s = timeout_s
        self.path = path

    async def system_time(self, host: str, port: int) -> float:
        _status, body = await self._post(host, port, system_time_request())
        root = _parse_xml(body)
        if _find(root, "Fault") is not None:
            raise_fault(root)
        return parse_system_time(body)

    async def device_info(self, host: str, port: int, creds: Credentials | None, *, skew_s: float = 0.0) -> DeviceInfo:
        # the token's Created must be in the camera's time, or it refuses the token as stale
        created = datetime.fromtimestamp(datetime.now(UTC).timestamp() + skew_s, UTC)
        status, body = await self._post(host, port, device_info_request(creds, created, os.urandom(16)))
        if status in (401, 403):
            raise OnvifAuthError(f"HTTP {status}")
        return parse_device_info(body)

    async def _post(self, host: str, port: int, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            'Content-Type: application/soap+xml; charset=utf-8\r\n'
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(head + body)
                await writer.drain()
                raw = await reader.read(MAX_RESPONSE_BYTES + 1)
                while raw and len(raw) <= MAX_RESPONSE_BYTES:
                    more = await reader.read(MAX_RESPONSE_BYTES + 1 - len(raw))
                    if not more:
                        break
                    raw += more
        except TimeoutError:
            raise OnvifUnreachable("no answer in time") from None
        except OSError as exc:
            raise OnvifUnreachable(exc.strerror or type(exc).__name__) from None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if len(raw) > MAX_RESPONSE_BYTES:
            raise OnvifFault("answer too large")
        return parse_http_response(raw)


def parse_http_response(raw: bytes) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise OnvifUnreachable("incomplete HTTP answer")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OnvifUnreachable("not an HTTP answer")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif headers.get("content-length", "").isdigit():
        body = body[: int(headers["content-length"])]
    return int(parts[1]), body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise OnvifFault("bad chunked encoding") from None
        if not sep or size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)
