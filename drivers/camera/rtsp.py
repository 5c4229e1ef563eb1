"""A small sans-I/O RTSP/1.0 codec and the health probe's conversation, with no sockets.

Only what a health probe needs: RFC 2326 OPTIONS and DESCRIBE; RFC 2617/7616 Digest with MD5 or SHA-256
and qop=auth; RFC 7617 Basic. Two layers, both pure:

- framing (`MessageParser`, `encode`, `request`, `response`): bytes in, `Message`s out, with a named
  size limit on every buffer. The camera twins (sim/cameras.py) use it too.
- `ProbeSession`: the probe's protocol flow, in h11's shape. The I/O layer (drivers/camera/probe.py)
  writes what `next_request()` returns, feeds what it reads to `receive(data)` (`b""` at EOF) and stops
  once `result` is set; it owns only sockets and timeouts (`timed_out()`, `connection_lost()`).

No asyncio or socket import here (tests/test_codec_purity.py checks), so tests feed the session bytes
whole, one at a time or with garbage. Written by hand because it is small: the existing Python RTSP
libraries either open a media session (which is exactly what a probe must not do) or pull in a whole
streaming stack.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from drivers.camera.base import Credentials, ProbeOutcome

RTSP_VERSION = "RTSP/1.0"
DEFAULT_PORT = 554
MAX_HEAD_BYTES = 16 * 1024  # start line + headers of one message
MAX_BODY_BYTES = 64 * 1024  # an SDP is a few hundred bytes; refuse anything absurd
MAX_DETAIL_CHARS = 80  # peer text (reason phrase, Server) kept in a result, escaped
USER_AGENT = "village-edge-probe/1"

_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")  # RFC 2326 section 15: also accept bare LF line ends
_LINE_RE = re.compile(r"\r?\n")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 section 3.2.6
_DIGITS_RE = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() also accepts "\u00b2", which int() refuses
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than HTAB


class RtspError(Exception):
    """Base of this codec's errors."""


class RtspProtocolError(RtspError):
    """The peer sent something that is not RTSP (or too much of it). `data` holds a short prefix."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data[:64]


class RtspAuthError(RtspError):
    """A challenge we cannot answer (unknown scheme or algorithm)."""


def printable(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Peer text made safe for a log line or a report: non-printable characters escaped, then cut."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return out[:limit]


def _int(value: str | None) -> int | None:
    """A decimal ASCII number, or None (missing or not a number)."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if _DIGITS_RE.fullmatch(value) else None


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
        return _int(self.message.header("CSeq"))

    @property
    def body(self) -> bytes:
        return self.message.body


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    message: Message


class MessageParser:
    """Frames RTSP messages out of a byte stream, h11-style: `feed_data(bytes)`, then `next_message()`
    until it returns None; or both at once with `feed(bytes) -> list[Message]`.

    Bounded: a head longer than MAX_HEAD_BYTES or a Content-Length over MAX_BODY_BYTES is an error, so
    between calls the buffer never holds more than one head and one body beyond the bytes last fed.
    Content-Length (RFC 7230 section 3.3.2, which RFC 2326 follows for framing): two different values
    (in two headers, or a list "5, 7") are a protocol error; identical duplicates ("5" twice, "5, 5")
    are the same decimal value generated twice by an upstream processor and are read as one, the
    choice RFC 7230 allows (h11 makes the same one). Interleaved binary data ('$' frames) is not
    expected before PLAY, which a probe never sends, so it is a protocol error here.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: tuple[str, tuple[tuple[str, str], ...], int] | None = None
        self._scanned = 0  # bytes of the buffer already searched for the end of the head

    @property
    def buffered(self) -> int:
        """Bytes held but not yet returned as a message."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """True between messages: nothing of a next message has arrived yet."""
        return self._head is None and not self._buf

    def clear(self) -> None:
        self._buf.clear()
        self._head = None
        self._scanned = 0

    def feed_data(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> Message | None:
        """The next complete message, or None until more data arrives. Raises RtspProtocolError."""
        if self._head is None:
            while self._buf[:1] in (b"\r", b"\n"):  # empty lines between messages (RFC 7230 section 3.5)
                del self._buf[:1]
                self._scanned = 0
            m = _HEAD_END_RE.search(self._buf, max(0, self._scanned - 3))
            if m is None:
                self._scanned = len(self._buf)
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise RtspProtocolError("message head too long", bytes(self._buf))
                if self._buf[:1] == b"$":
                    raise RtspProtocolError("interleaved data before PLAY", bytes(self._buf))
                return None
            if m.start() > MAX_HEAD_BYTES:
                raise RtspProtocolError("message head too long", bytes(self._buf))
            self._head = _parse_head(bytes(self._buf[: m.start()]))
            del self._buf[: m.end()]
            self._scanned = 0
        start, headers, length = self._head
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[:length])
        del self._buf[:length]
        self._head = None
        return Message(start, headers, body)

    def feed(self, data: bytes) -> list[Message]:
        self.feed_data(data)
        out: list[Message] = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out


def _parse_head(raw: bytes) -> tuple[str, tuple[tuple[str, str], ...], int]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # e.g. a GBK Server header; names must still be ASCII tokens
    lines = _LINE_RE.split(text)
    start = lines[0]
    if not start or "RTSP/" not in start or _CTL_RE.search(start):
        raise RtspProtocolError("not an RTSP start line", raw)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if _CTL_RE.search(line):
            raise RtspProtocolError(f"control character in header line {line[:40]!r}", raw)
        if line[:1] in (" ", "\t"):  # obsolete line folding
            if not headers:
                raise RtspProtocolError("continuation line before any header", raw)
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise RtspProtocolError(f"bad header line {line[:40]!r}", raw)
        headers.append((name, value.strip(" \t")))
    lengths: set[int] = set()
    for k, v in headers:
        if k.lower() == "content-length":
            for part in v.split(","):
                n = _int(part)
                if n is None:
                    raise RtspProtocolError(f"bad Content-Length {v[:20]!r}", raw)
                lengths.add(n)
    if len(lengths) > 1:
        raise RtspProtocolError(f"conflicting Content-Length values {sorted(lengths)[:4]}", raw)
    length = lengths.pop() if lengths else 0
    if length > MAX_BODY_BYTES:
        raise RtspProtocolError(f"body of {length} bytes is over the {MAX_BODY_BYTES} limit", raw)
    return start, tuple(headers), length


def parse_response(msg: Message) -> Response:
    version, _, rest = msg.start.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("RTSP/") or len(code) != 3 or not _DIGITS_RE.fullmatch(code):
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
    for algorithm in ("sha-256", "md5"):  # RFC 7616 section 3.7: the strongest one offered
        for c in parsed:
            if c.scheme == "digest" and c.params.get("algorithm", "MD5").lower() == algorithm:
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


# ------------------------------------------------------------------------------- the probe session

OPTIONS, DESCRIBE, AUTH = "options", "describe", "auth"  # the steps, as ProbeResult.step names them
MAX_IGNORED_MESSAGES = 8  # requests from the camera (e.g. GET_PARAMETER) tolerated before giving up
_ACCEPT = ("Accept", "application/sdp")


@dataclass(frozen=True, slots=True)
class SessionResult:
    """How the probe's conversation ended. Every text field is escaped peer text; no secret is held."""

    outcome: ProbeOutcome
    step: str  # options | describe | auth
    status: int | None = None
    detail: str = ""
    server: str = ""  # the camera's Server header, when it sent one
    sdp: bytes = field(default=b"", repr=False)  # the DESCRIBE body of a 200


@dataclass(frozen=True, slots=True)
class Answered:
    """The camera answered the request of `step` (CSeq matched)."""

    step: str
    status: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message that is not an answer and changes nothing (a request from the camera)."""

    what: str


@dataclass(frozen=True, slots=True)
class Finished:
    result: SessionResult


Event = Answered | Ignored | Finished


class ProbeSession:
    """One probe's conversation: OPTIONS -> DESCRIBE -> (401) -> one authenticated DESCRIBE.

    Sans-I/O (h11's shape): `next_request()` gives the bytes to write (None while an answer is awaited
    or once finished), `receive(data)` takes what was read (`b""` means the peer closed) and returns
    events, the last one `Finished(result)`. The caller adds the I/O facts: `timed_out()` when a step's
    answer did not come in time, `connection_lost(detail)` when the socket failed.

    Rules: one request at a time; an answer must carry the CSeq of the request it answers (a missing
    CSeq is tolerated, as some firmware omits it on errors; a different or malformed one is a protocol
    error). A 401 to the plain DESCRIBE is answered once, Digest preferred over Basic; a 401 to the
    authenticated DESCRIBE is `auth_failed`, except that a Digest challenge with `stale=true` (RFC 7616
    section 3.3: the nonce expired, the password was right) is answered once more with its new nonce.
    Never more than two password attempts in one probe, never a loop: cameras lock accounts out.
    `send_credentials=False` never sends a password (a 401 is then `auth_required`).
    """

    def __init__(self, url: str, creds: Credentials | None, *, cnonce: str, send_credentials: bool = True) -> None:
        self.url = split_url(url).url  # the request URL, never with userinfo (ValueError if not rtsp://)
        self._creds = creds if send_credentials else None
        self._cnonce = cnonce  # random per probe, chosen by the I/O layer
        self._parser = MessageParser()
        self._step = OPTIONS
        self._cseq = 0
        self._outgoing: bytes | None = None
        self._awaiting = False
        self._stale_answered = False
        self._ignored = 0
        self._server = ""
        self._result: SessionResult | None = None
        self._queue("OPTIONS", [])

    def __repr__(self) -> str:
        user = self._creds.user if self._creds else None
        return f"ProbeSession(url={self.url!r}, user={user!r}, step={self._step!r}, result={self._result!r})"

    @property
    def step(self) -> str:
        return self._step

    @property
    def result(self) -> SessionResult | None:
        return self._result

    @property
    def awaiting(self) -> bool:
        """A request was handed out and its answer has not come yet."""
        return self._awaiting and self._result is None

    @property
    def buffered(self) -> int:
        return self._parser.buffered

    # ------------------------------------------------------------------ the caller's side
    def next_request(self) -> bytes | None:
        if self._result is not None or self._outgoing is None:
            return None
        out, self._outgoing = self._outgoing, None
        self._awaiting = True
        return out

    def receive(self, data: bytes) -> list[Event]:
        if self._result is not None:
            return []  # after the end nothing is read or kept
        if not data:
            closed = "connection closed" if self._parser.idle else "connection closed mid-message"
            return [self._finish(ProbeOutcome.UNREACHABLE, detail=f"{closed} during {self._step}")]
        self._parser.feed_data(data)
        events: list[Event] = []
        while self._result is None:
            try:
                msg = self._parser.next_message()
                if msg is None:
                    break
                events += self._on_message(msg)
            except RtspProtocolError as exc:
                events.append(self._finish(ProbeOutcome.PROTOCOL_ERROR, detail=str(exc)))
        return events

    def timed_out(self) -> SessionResult:
        if self._result is None:
            self._finish(ProbeOutcome.TIMEOUT, detail=f"no answer to {self._step}")
        assert self._result is not None
        return self._result

    def connection_lost(self, detail: str) -> SessionResult:
        if self._result is None:
            self._finish(ProbeOutcome.UNREACHABLE, detail=printable(detail))
        assert self._result is not None
        return self._result

    # ------------------------------------------------------------------ the protocol
    def _queue(self, method: str, headers: list[tuple[str, str]]) -> None:
        self._cseq += 1
        self._outgoing = request(method, self.url, self._cseq, headers)

    def _finish(self, outcome: ProbeOutcome, status: int | None = None, detail: str = "",
                sdp: bytes = b"") -> Finished:
        self._result = SessionResult(outcome, self._step, status, detail, self._server, sdp)
        self._outgoing = None
        self._parser.clear()
        return Finished(self._result)

    def _on_message(self, msg: Message) -> list[Event]:
        if not msg.start.startswith("RTSP/"):
            req = parse_request(msg)  # a request from the camera; nothing a probe must answer
            self._ignored += 1
            if self._ignored > MAX_IGNORED_MESSAGES:
                return [self._finish(ProbeOutcome.PROTOCOL_ERROR, detail="too many requests from the camera")]
            return [Ignored(f"{printable(req.method, 20)} request from the camera")]
        resp = parse_response(msg)
        if not self._awaiting:
            return [self._finish(ProbeOutcome.PROTOCOL_ERROR, resp.status, "an answer to no request")]
        cseqs = msg.header_all("CSeq")
        if cseqs and (len(cseqs) > 1 or _int(cseqs[0]) != self._cseq):
            got = printable(", ".join(cseqs), 30)
            return [self._finish(ProbeOutcome.PROTOCOL_ERROR, resp.status,
                                 f"wrong CSeq: answer has {got}, request had {self._cseq}")]
        self._awaiting = False
        server = msg.header("Server")
        if server:
            self._server = printable(server, 64)
        answered = Answered(self._step, resp.status)
        return [answered, *self._advance(resp)]

    def _advance(self, resp: Response) -> list[Event]:
        if self._step == OPTIONS:  # any answer will do: DESCRIBE is what tells
            self._step = DESCRIBE
            self._queue("DESCRIBE", [_ACCEPT])
            return []
        if resp.status != 401:
            return [self._classify(resp)]
        challenge = pick_challenge(resp.message.header_all("WWW-Authenticate"))
        if self._step == DESCRIBE:
            if self._creds is None:
                return [self._finish(ProbeOutcome.AUTH_REQUIRED, 401, "camera asks for credentials")]
            if challenge is None:
                return [self._finish(ProbeOutcome.PROTOCOL_ERROR, 401, "no usable auth challenge")]
            return self._answer(challenge)
        if (challenge is not None and challenge.scheme == "digest" and not self._stale_answered
                and challenge.params.get("stale", "").lower() == "true"):
            self._stale_answered = True
            return self._answer(challenge)
        return [self._finish(ProbeOutcome.AUTH_FAILED, 401, "credentials refused")]

    def _answer(self, challenge: Challenge) -> list[Event]:
        assert self._creds is not None
        self._step = AUTH
        try:
            value = authorization(challenge, user=self._creds.user, password=self._creds.password,
                                  method="DESCRIBE", uri=self.url, cnonce=self._cnonce)
        except RtspAuthError as exc:
            return [self._finish(ProbeOutcome.PROTOCOL_ERROR, 401, printable(str(exc)))]
        self._queue("DESCRIBE", [_ACCEPT, ("Authorization", value)])
        return []

    def _classify(self, resp: Response) -> Finished:
        if resp.status == 200:
            if sdp_has_video(resp.body):
                return self._finish(ProbeOutcome.OK, 200, sdp=resp.body)
            return self._finish(ProbeOutcome.NO_VIDEO, 200, "SDP has no video stream", resp.body)
        if resp.status == 404:
            return self._finish(ProbeOutcome.NOT_FOUND, 404, "stream path not found")
        return self._finish(ProbeOutcome.ERROR, resp.status, printable(f"{resp.status} {resp.reason}"))
