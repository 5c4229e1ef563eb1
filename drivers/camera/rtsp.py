"""A small sans-I/O RTSP/1.0 codec: requests, response framing, Digest and Basic authentication.

Only what a health probe needs (RFC 2326 OPTIONS and DESCRIBE; RFC 2617/7616 Digest with MD5 or
SHA-256 and qop=auth; RFC 7617 Basic). No sockets and no asyncio here, so the same framing serves the
prober (drivers/camera/probe.py) and the camera twins (sim/cameras.py), and tests feed it bytes.

Written by hand because it is small: the existing Python RTSP libraries either open a media session
(which is exactly what a probe must not do) or pull in a whole streaming stack.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

RTSP_VERSION = "RTSP/1.0"
DEFAULT_PORT = 554
MAX_HEAD_BYTES = 16 * 1024  # start line + headers of one message
MAX_BODY_BYTES = 64 * 1024  # an SDP is a few hundred bytes; refuse anything absurd
USER_AGENT = "village-edge-probe/1"


class RtspError(Exception):
    """Base of this codec's errors."""


class RtspProtocolError(RtspError):
    """The peer sent something that is not RTSP (or too much of it). `data` holds a short prefix."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data[:64]


class RtspAuthError(RtspError):
    """A challenge we cannot answer (unknown scheme or algorithm)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One framed RTSP message: `start` is the request or status line."""

    start: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    message: Message

    @property
    def cseq(self) -> int | None:
        value = self.message.header("CSeq")
        return int(value) if value and value.strip().isdigit() else None

    @property
    def body(self) -> bytes:
        return self.message.body


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    message: Message


class MessageParser:
    """Frames RTSP messages out of a byte stream: `feed(bytes) -> list[Message]`.

    Interleaved binary data ('$' frames) is not expected before PLAY, which a probe never sends, so
    it is a protocol error here.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: tuple[str, tuple[tuple[str, str], ...], int] | None = None

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            if self._head is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise RtspProtocolError("message head too long", bytes(self._buf))
                    if self._buf[:1] == b"$":
                        raise RtspProtocolError("interleaved data before PLAY", bytes(self._buf))
                    return out
                if end > MAX_HEAD_BYTES:
                    raise RtspProtocolError("message head too long", bytes(self._buf))
                self._head = _parse_head(bytes(self._buf[:end]))
                del self._buf[: end + 4]
            start, headers, length = self._head
            if len(self._buf) < length:
                return out
            body = bytes(self._buf[:length])
            del self._buf[:length]
            self._head = None
            out.append(Message(start, headers, body))


def _parse_head(raw: bytes) -> tuple[str, tuple[tuple[str, str], ...], int]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RtspProtocolError("message head is not UTF-8", raw) from None
    lines = text.split("\r\n")
    start = lines[0]
    if not start or ("RTSP/" not in start):
        raise RtspProtocolError("not an RTSP start line", raw)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # obsolete line folding
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise RtspProtocolError(f"bad header line {line[:40]!r}", raw)
        headers.append((name.strip(), value.strip()))
    length = 0
    for k, v in headers:
        if k.lower() == "content-length":
            if not v.isdigit():
                raise RtspProtocolError(f"bad Content-Length {v[:20]!r}", raw)
            length = int(v)
    if length > MAX_BODY_BYTES:
        raise RtspProtocolError(f"body of {length} bytes is over the {MAX_BODY_BYTES} limit", raw)
    return start, tuple(headers), length


def parse_response(msg: Message) -> Response:
    version, _, rest = msg.start.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("RTSP/") or not code.isdigit() or len(code) != 3:
        raise RtspProtocolError(f"not a status line: {msg.start[:60]!r}", msg.start.encode())
    return Response(int(code), reason, msg)


def parse_request(msg: Message) -> Request:
    parts = msg.start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("RTSP/"):
        raise RtspProtocolError(f"not a request line: {msg.start[:60]!r}", msg.start.encode())
    return Request(parts[0], parts[1], msg)


def encode(start: str, headers: list[tuple[str, str]] | tuple[tuple[str, str], ...], body: bytes = b"") -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request(method: str, url: str, cseq: int, extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = [("CSeq", str(cseq)), ("User-Agent", USER_AGENT), *(extra or [])]
    return encode(f"{method} {url} {RTSP_VERSION}", headers)


def response(status: int, reason: str, cseq: int | None, extra: list[tuple[str, str]] | None = None,
             body: bytes = b"") -> bytes:
    headers = [("CSeq", str(cseq))] if cseq is not None else []
    return encode(f"{RTSP_VERSION} {status} {reason}", [*headers, *(extra or [])], body)


# ------------------------------------------------------------------------------------------ URLs


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect and what URL to put on the request line (never with credentials)."""

    host: str
    port: int
    url: str


def split_url(url: str) -> Target:
    """`rtsp://[user:pass@]host[:port]/path` -> Target without the userinfo. Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp", "rtsps"):
        raise ValueError("scheme must be rtsp://")
    if not parts.hostname:
        raise ValueError("no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("bad port") from None
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(host, port, clean)


# ------------------------------------------------------------------------------- authentication


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "digest" or "basic"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*,?')


def parse_challenge(value: str) -> Challenge:
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        raw = m.group(3) if m.group(3) is not None else m.group(2)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw)
        pos = m.end()
    return Challenge(scheme.lower(), params)


def pick_challenge(values: list[str]) -> Challenge | None:
    """The strongest challenge we can answer among WWW-Authenticate headers: Digest over Basic."""
    parsed = [parse_challenge(v) for v in values if v.strip()]
    for c in parsed:
        if c.scheme == "digest" and _digest_hash(c.params.get("algorithm", "MD5")) is not None:
            return c
    for c in parsed:
        if c.scheme == "basic":
            return c
    return None


def _digest_hash(algorithm: str) -> str | None:
    return {"md5": "md5", "sha-256": "sha256"}.get(algorithm.lower())


def _h(name: str, text: str) -> str:
    return hashlib.new(name, text.encode()).hexdigest()


def digest_response(*, algorithm: str, user: str, realm: str, password: str, method: str, uri: str,
                    nonce: str, qop: str | None, nc: str, cnonce: str) -> str:
    """The `response=` value (RFC 7616 section 3.4.1), shared by the client and the twin's check."""
    name = _digest_hash(algorithm)
    if name is None:
        raise RtspAuthError(f"unsupported digest algorithm {algorithm!r}")
    ha1 = _h(name, f"{user}:{realm}:{password}")
    ha2 = _h(name, f"{method}:{uri}")
    if qop:
        return _h(name, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(name, f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: Challenge, *, user: str, password: str, method: str, uri: str,
                  cnonce: str, nc: int = 1) -> str:
    """The Authorization header value answering `challenge`. `cnonce` comes from the caller (I/O)."""
    if challenge.scheme == "basic":
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return f"Basic {token}"
    if challenge.scheme != "digest":
        raise RtspAuthError(f"unsupported auth scheme {challenge.scheme!r}")
    p = challenge.params
    algorithm = p.get("algorithm", "MD5")
    qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise RtspAuthError(f"unsupported qop {p.get('qop')!r}")
    qop = "auth" if qops else None
    ncs = f"{nc:08x}"
    resp = digest_response(algorithm=algorithm, user=user, realm=p.get("realm", ""), password=password,
                           method=method, uri=uri, nonce=p.get("nonce", ""), qop=qop, nc=ncs, cnonce=cnonce)
    fields = [f'username="{_quote(user)}"', f'realm="{_quote(p.get("realm", ""))}"',
              f'nonce="{_quote(p.get("nonce", ""))}"', f'uri="{_quote(uri)}"', f'response="{resp}"']
    if "algorithm" in p:
        fields.append(f"algorithm={algorithm}")
    if "opaque" in p:
        fields.append(f'opaque="{_quote(p["opaque"])}"')
    if qop:
        fields += [f"qop={qop}", f"nc={ncs}", f'cnonce="{_quote(cnonce)}"']
    return "Digest " + ", ".join(fields)


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def sdp_has_video(body: bytes) -> bool:
    return any(line.startswith(b"m=video") for line in body.splitlines())
