"""The probe's RTSP conversation (drivers/camera/rtsp.py `ProbeSession`), sans-I/O: no socket anywhere.

A pure in-memory camera (`PaperCamera`) answers the session's requests with bytes built by the codec; the
session is fed those bytes whole, one byte at a time, in odd pieces, with garbage; hypothesis checks that
no input makes it raise or hold more than one message's worth of bytes. The same scenarios over real TCP
against the twins and a real GStreamer server are in test_camera_probes.py / test_camera_real_rtsp.py.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from drivers.camera import rtsp
from drivers.camera.base import Credentials, ProbeOutcome

URL = "rtsp://192.168.1.64/Streaming/Channels/102"
USER, PASSWORD = "admin", "Pa55-Secret-77"
CREDS = Credentials(USER, PASSWORD)
BASIC_TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SDP = b"v=0\r\ns=cam\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
AUDIO_SDP = b"v=0\r\ns=cam\r\nm=audio 0 RTP/AVP 0\r\n"
CNONCE = "0a4f113b"


@dataclass
class PaperCamera:
    """A camera on paper: request in, answer bytes out, checking Digest/Basic like a real one."""

    scheme: str = "digest"  # digest | basic | both | none
    password: str = PASSWORD
    algorithm: str = "MD5"
    stale_times: int = 0  # answer this many correct Digest answers with 401 stale=true (nonce expired)
    status: int = 200
    reason: str = "OK"
    body: bytes = SDP
    extra: list[tuple[str, str]] = field(default_factory=lambda: [("Server", "Hikvision-Webs")])
    nonces: int = 0
    seen: list[rtsp.Request] = field(default_factory=list)
    password_attempts: int = 0

    def answer(self, req: rtsp.Request) -> bytes:
        self.seen.append(req)
        cseq = int(req.message.header("CSeq") or 0)
        if req.method == "OPTIONS":
            return rtsp.response(200, "OK", cseq, [("Public", "OPTIONS, DESCRIBE"), *self.extra])
        auth = req.message.header("Authorization")
        if self.scheme != "none":
            if auth is None:
                return self._challenge(cseq)
            self.password_attempts += 1
            ok = self._check(auth, req)
            if ok and self.stale_times and auth.startswith("Digest"):
                self.stale_times -= 1
                return self._challenge(cseq, stale=True)
            if not ok:
                return self._challenge(cseq)
        extra = [("Content-Type", "application/sdp"), *self.extra] if self.body else self.extra
        return rtsp.response(self.status, self.reason, cseq, extra, self.body)

    def nonce(self) -> str:
        return f"n{self.nonces:04d}"

    def _challenge(self, cseq: int, *, stale: bool = False) -> bytes:
        self.nonces += 1
        digest = f'Digest realm="cam", nonce="{self.nonce()}", qop="auth", algorithm={self.algorithm}'
        if stale:
            digest += ", stale=TRUE"
        offers = {"digest": [digest], "basic": ['Basic realm="cam"'], "both": ['Basic realm="cam"', digest]}
        return rtsp.response(401, "Unauthorized", cseq, [("WWW-Authenticate", v) for v in offers[self.scheme]])

    def _check(self, header: str, req: rtsp.Request) -> bool:
        got = rtsp.parse_challenge(header)
        if got.scheme == "basic":
            return header == f"Basic {base64.b64encode(f'{USER}:{self.password}'.encode()).decode()}"
        p = got.params
        if p.get("nonce") != self.nonce() or p.get("uri") != req.url:
            return False
        want = rtsp.digest_response(algorithm=p.get("algorithm", "MD5"), user=USER, realm=p.get("realm", ""),
                                    password=self.password, method=req.method, uri=p.get("uri", ""),
                                    nonce=p.get("nonce", ""), qop=p.get("qop"), nc=p.get("nc", ""),
                                    cnonce=p.get("cnonce", ""))
        return p.get("username") == USER and p.get("response") == want


def pieces(data: bytes, chunk: int | None) -> list[bytes]:
    if chunk is None:
        return [data]
    return [data[i:i + chunk] for i in range(0, len(data), chunk)]


Answer = Callable[[rtsp.Request], bytes]


def converse(session: rtsp.ProbeSession, answer: Answer, chunk: int | None = None,
             ) -> tuple[rtsp.SessionResult, list[rtsp.Request], list[rtsp.Event]]:
    """Drive the session as probe.py does: write what it says, feed it what the camera says."""
    requests: list[rtsp.Request] = []
    events: list[rtsp.Event] = []
    for _ in range(10):
        out = session.next_request()
        if out is None:
            break
        assert session.next_request() is None  # one request at a time
        (msg,) = rtsp.MessageParser().feed(out)
        req = rtsp.parse_request(msg)
        requests.append(req)
        for piece in pieces(answer(req), chunk):
            events += session.receive(piece)
        if session.result is not None:
            break
    assert session.result is not None, "the session neither finished nor asked for anything"
    assert session.next_request() is None and session.receive(b"more") == []
    return session.result, requests, events


def new(creds: Credentials | None = CREDS, **kw: bool) -> rtsp.ProbeSession:
    return rtsp.ProbeSession(URL, creds, cnonce=CNONCE, **kw)


# ------------------------------------------------------------------------------------ the flows
@pytest.mark.parametrize("chunk", [None, 1, 7, 100])
def test_digest_flow_whole_and_in_pieces(chunk):
    cam = PaperCamera()
    result, reqs, events = converse(new(), cam.answer, chunk)
    assert result == rtsp.SessionResult(ProbeOutcome.OK, "auth", 200, "", "Hikvision-Webs", SDP)
    assert [(r.method, r.message.header("CSeq")) for r in reqs] == [("OPTIONS", "1"), ("DESCRIBE", "2"),
                                                                    ("DESCRIBE", "3")]
    assert all(r.url == URL and r.message.header("Accept") == "application/sdp" for r in reqs[1:])
    assert reqs[1].message.header("Authorization") is None
    auth = rtsp.parse_challenge(reqs[2].message.header("Authorization") or "")
    assert (auth.scheme, auth.params["nonce"], auth.params["uri"], auth.params["cnonce"]) == ("digest", "n0001",
                                                                                              URL, CNONCE)
    assert [e for e in events if not isinstance(e, rtsp.Finished)] == [
        rtsp.Answered("options", 200), rtsp.Answered("describe", 401), rtsp.Answered("auth", 200)]
    assert events[-1] == rtsp.Finished(result)


def test_basic_flow_and_no_auth():
    cam = PaperCamera(scheme="basic")
    result, reqs, _ = converse(new(), cam.answer)
    assert (result.outcome, result.step) == (ProbeOutcome.OK, "auth")
    assert reqs[2].message.header("Authorization") == f"Basic {BASIC_TOKEN}"
    result, reqs, _ = converse(new(), PaperCamera(scheme="none").answer)
    assert (result.outcome, result.step, len(reqs)) == (ProbeOutcome.OK, "describe", 2)


def test_digest_preferred_over_basic_and_sha256_over_md5():
    cam = PaperCamera(scheme="both")
    result, reqs, _ = converse(new(), cam.answer)
    assert result.outcome is ProbeOutcome.OK and (reqs[2].message.header("Authorization") or "").startswith("Digest")
    offers = ['Digest realm="a", nonce="1", algorithm=MD5', 'Digest realm="b", nonce="2", algorithm=SHA-256']
    chosen = rtsp.pick_challenge(offers)
    assert chosen is not None and chosen.realm == "b"
    result, _, _ = converse(new(), PaperCamera(algorithm="SHA-256").answer)
    assert result.outcome is ProbeOutcome.OK


def test_wrong_password_is_one_attempt_only():
    cam = PaperCamera(password="changed")
    result, reqs, _ = converse(new(), cam.answer)
    assert (result.outcome, result.step, result.status, result.detail) == (
        ProbeOutcome.AUTH_FAILED, "auth", 401, "credentials refused")
    assert cam.password_attempts == 1 and len(reqs) == 3


@pytest.mark.parametrize("kw", [{"creds": None}, {"send_credentials": False}])
def test_no_credentials_or_held_back_never_sends_a_password(kw):
    creds = kw.pop("creds", CREDS)
    cam = PaperCamera()
    result, reqs, _ = converse(new(creds, **kw), cam.answer)
    assert (result.outcome, result.step, result.status) == (ProbeOutcome.AUTH_REQUIRED, "describe", 401)
    assert cam.password_attempts == 0 and all(r.message.header("Authorization") is None for r in reqs)


def test_stale_nonce_is_answered_once_with_the_new_nonce():
    cam = PaperCamera(stale_times=1)
    result, reqs, _ = converse(new(), cam.answer)
    assert (result.outcome, result.step) == (ProbeOutcome.OK, "auth")
    nonces = [rtsp.parse_challenge(r.message.header("Authorization") or "").params.get("nonce") for r in reqs[2:]]
    assert nonces == ["n0001", "n0002"] and [r.message.header("CSeq") for r in reqs] == ["1", "2", "3", "4"]
    # a camera that calls every nonce stale gets two attempts, then the probe gives up: never a loop
    cam = PaperCamera(stale_times=100)
    result, reqs, _ = converse(new(), cam.answer)
    assert (result.outcome, cam.password_attempts, len(reqs)) == (ProbeOutcome.AUTH_FAILED, 2, 4)
    # stale=true on a Basic-only camera or on the first 401 changes nothing
    cam = PaperCamera(scheme="basic", password="changed")
    assert converse(new(), cam.answer)[0].outcome is ProbeOutcome.AUTH_FAILED and cam.password_attempts == 1


def test_statuses():
    r = converse(new(), PaperCamera(status=404, reason="Not Found", body=b"").answer)[0]
    assert (r.outcome, r.step, r.status) == (ProbeOutcome.NOT_FOUND, "auth", 404)
    r = converse(new(), PaperCamera(body=AUDIO_SDP).answer)[0]
    assert (r.outcome, r.detail, r.sdp) == (ProbeOutcome.NO_VIDEO, "SDP has no video stream", AUDIO_SDP)
    r = converse(new(), PaperCamera(status=503, reason="Busy\u2028\x85 now", body=b"").answer)[0]
    assert (r.outcome, r.status) == (ProbeOutcome.ERROR, 503)
    assert r.detail == "503 Busy\\u2028\\x85 now" and r.detail.isprintable()  # never a raw line break in a log


def test_unusable_challenges():
    def only(value: str) -> Answer:
        def answer(req: rtsp.Request) -> bytes:
            cseq = int(req.message.header("CSeq") or 0)
            if req.method == "OPTIONS":
                return rtsp.response(200, "OK", cseq)
            return rtsp.response(401, "Unauthorized", cseq, [("WWW-Authenticate", value)])
        return answer

    r = converse(new(), only('Bearer realm="x"'))[0]
    assert (r.outcome, r.step, r.detail) == (ProbeOutcome.PROTOCOL_ERROR, "describe", "no usable auth challenge")
    r = converse(new(), only('Digest realm="x", nonce="1", qop="auth-int"'))[0]
    assert (r.outcome, r.step) == (ProbeOutcome.PROTOCOL_ERROR, "auth") and "qop" in r.detail


# ------------------------------------------------------------------------------ CSeq and framing
def scripted(*answers: bytes) -> Answer:
    it = iter(answers)
    return lambda req: next(it)


OPTIONS_OK = rtsp.response(200, "OK", 1)


@pytest.mark.parametrize(("answer", "detail"), [
    (rtsp.response(200, "OK", 7), "wrong CSeq: answer has 7, request had 1"),
    (b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nCSeq: 2\r\n\r\n", "wrong CSeq: answer has 1, 2, request had 1"),
    (b"RTSP/1.0 200 OK\r\nCSeq: \xc2\xb2\r\n\r\n", "wrong CSeq: answer has \u00b2, request had 1"),  # not ASCII
    (b"RTSP/1.0 200 OK\r\nCSeq: one\r\n\r\n", "wrong CSeq: answer has one, request had 1"),
])
def test_wrong_cseq_is_a_protocol_error(answer, detail):
    r, _, _ = converse(new(), scripted(answer))
    assert (r.outcome, r.step, r.detail) == (ProbeOutcome.PROTOCOL_ERROR, "options", detail)


def test_a_missing_cseq_is_tolerated():
    r, _, _ = converse(new(), scripted(b"RTSP/1.0 200 OK\r\n\r\n", b"RTSP/1.0 404 Not Found\r\n\r\n"))
    assert (r.outcome, r.step) == (ProbeOutcome.NOT_FOUND, "describe")


@pytest.mark.parametrize(("lengths", "ok"), [
    (["29", "30"], False),  # two headers, two values: the framing is ambiguous (RFC 7230 section 3.3.3)
    (["29, 30"], False),
    (["29", "29"], True),  # the same value twice: read as one (RFC 7230 section 3.3.2 allows either)
    (["29, 29"], True),
    (["029"], True),
    (["\u0662\u0669"], False),  # Arabic-Indic digits pass str.isdigit() but are not a Content-Length
    (["-29"], False),
    (["29,"], False),
])
def test_content_length_duplicates_and_conflicts(lengths, ok):
    body = b"v=0\r\nm=video 0 RTP/AVP 96\r\nxx"
    assert len(body) == 29
    head = "RTSP/1.0 200 OK\r\nCSeq: 2\r\n" + "".join(f"Content-Length: {v}\r\n" for v in lengths)
    describe = head.encode() + b"\r\n" + body
    r, _, _ = converse(new(None), scripted(OPTIONS_OK, describe))
    if ok:
        assert (r.outcome, r.sdp) == (ProbeOutcome.OK, body)
    else:
        assert r.outcome is ProbeOutcome.PROTOCOL_ERROR and "Content-Length" in r.detail, r


def test_garbage_and_strays():
    describe_ok = rtsp.response(200, "OK", 2, [], SDP)
    # trailing garbage after the final answer is never read
    assert converse(new(None), scripted(OPTIONS_OK, describe_ok + b"\x00\xffjunk"))[0].outcome is ProbeOutcome.OK
    # garbage instead of an answer
    r = converse(new(None), scripted(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n"))[0]
    assert (r.outcome, r.step) == (ProbeOutcome.PROTOCOL_ERROR, "options")
    r = converse(new(None), scripted(b"HTTP/1.1 400 Bad Request\r\n\r\n"))[0]
    assert r.outcome is ProbeOutcome.PROTOCOL_ERROR
    r = converse(new(None), scripted(b"$\x00\x00\x10" + b"\x00" * 16))[0]
    assert r.outcome is ProbeOutcome.PROTOCOL_ERROR
    r = converse(new(None), scripted(b"RTSP/1.0 200 OK\r\nX-\x1b[2J: 1\r\n\r\n"))[0]
    assert r.outcome is ProbeOutcome.PROTOCOL_ERROR and "\x1b" not in r.detail
    # two answers to one request: the second answers nothing
    r = converse(new(None), scripted(OPTIONS_OK + rtsp.response(200, "OK", 2)))[0]
    assert (r.outcome, r.detail) == (ProbeOutcome.PROTOCOL_ERROR, "an answer to no request")
    # empty lines between messages and bare-LF line ends (RFC 2326 section 15) are read
    lf = b"\r\n\r\nRTSP/1.0 200 OK\nCSeq: 2\nContent-Length: %d\n\n" % len(SDP) + SDP
    assert converse(new(None), scripted(OPTIONS_OK, lf))[0].outcome is ProbeOutcome.OK


def test_requests_from_the_camera_are_ignored_but_bounded():
    ping = b"GET_PARAMETER rtsp://cam/ RTSP/1.0\r\nCSeq: 90\r\n\r\n"
    s = new(None)
    s.next_request()
    events = s.receive(ping + OPTIONS_OK)
    assert events == [rtsp.Ignored("GET_PARAMETER request from the camera"), rtsp.Answered("options", 200)]
    s = new(None)
    s.next_request()
    s.receive(ping * (rtsp.MAX_IGNORED_MESSAGES + 1))
    assert s.result is not None and s.result.detail == "too many requests from the camera"


def test_eof_timeout_and_socket_errors():
    s = new()
    s.next_request()
    assert s.receive(b"") == [rtsp.Finished(rtsp.SessionResult(ProbeOutcome.UNREACHABLE, "options", None,
                                                                "connection closed during options"))]
    s = new()
    s.next_request()
    s.receive(OPTIONS_OK[:10])
    s.receive(b"")
    assert s.result is not None and s.result.detail == "connection closed mid-message during options"
    s = new()
    assert not s.awaiting and s.next_request() is not None and s.awaiting
    s.receive(OPTIONS_OK)
    assert not s.awaiting and s.step == "describe"
    s.next_request()
    assert s.timed_out() == rtsp.SessionResult(ProbeOutcome.TIMEOUT, "describe", None, "no answer to describe")
    assert s.timed_out() is s.result and s.connection_lost("reset") is s.result  # the first end stands
    s = new()
    assert s.connection_lost("Connection reset\nby peer").detail == "Connection reset\\nby peer"


def test_an_answer_before_any_request_is_a_protocol_error():
    s = new()
    s.receive(OPTIONS_OK)
    assert s.result is not None and s.result.outcome is ProbeOutcome.PROTOCOL_ERROR
    assert s.next_request() is None


def test_no_secret_in_any_repr_event_or_result():
    for scheme in ("digest", "basic"):
        for cam in (PaperCamera(scheme=scheme), PaperCamera(scheme=scheme, password="wrong")):
            s = new()
            texts = [repr(s)]
            result, _, events = converse(s, cam.answer)
            texts += [repr(s), repr(result), str(result), *map(repr, events)]
            for text in texts:
                assert PASSWORD not in text and BASIC_TOKEN not in text, text
    assert "user='admin'" in repr(new())
    # a URL with userinfo never reaches the request line or the repr
    s = rtsp.ProbeSession(f"rtsp://{USER}:{PASSWORD}@192.168.1.64/Streaming/Channels/102", CREDS, cnonce="c")
    assert s.url == URL and PASSWORD.encode() not in (s.next_request() or b"") and PASSWORD not in repr(s)
    with pytest.raises(ValueError):
        rtsp.ProbeSession("http://cam/", CREDS, cnonce="c")


# -------------------------------------------------------------------------------------- hypothesis
def _assert_bounded(s: rtsp.ProbeSession) -> None:
    if s.result is None:
        assert s.buffered <= rtsp.MAX_BODY_BYTES  # at most one head or one body in progress
    else:
        assert s.buffered == 0
        assert s.result.detail.isprintable() and s.result.server.isprintable()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30), st.booleans())
def test_no_bytes_crash_the_session_or_grow_its_buffer(chunks, eof):
    s = new()
    s.next_request()
    for c in [*chunks, *([b""] if eof else [])]:
        s.receive(c)
        _assert_bounded(s)
        s.next_request()
    assert s.timed_out().outcome in set(ProbeOutcome)


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=1, max_value=4000))
def test_a_head_or_body_that_never_ends_is_refused_not_hoarded(chunk):
    s = new()
    s.next_request()
    stream = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nX: " + b"a" * (rtsp.MAX_HEAD_BYTES + 1)
    for piece in pieces(stream, chunk):
        s.receive(piece)
        _assert_bounded(s)
    assert s.result is not None and s.result.detail == "message head too long"


_WILD = st.text(st.characters(codec="utf-8"), max_size=30)
_PLAIN = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30)
_TEXT = st.one_of(_PLAIN, _PLAIN, _PLAIN, _WILD)
_CHALLENGE = st.tuples(st.just("WWW-Authenticate"), st.sampled_from([
    'Digest realm="r", nonce="n", qop="auth"', 'Digest realm="r", nonce="m", stale=true, algorithm=SHA-256',
    'Basic realm="r"', 'Digest realm="r", nonce="s", stale=TRUE', 'Digest nonce="', "Digest ,,,==", "Basic"]))
_HEADER = st.one_of(
    st.tuples(st.sampled_from(["Server", "X-Info", "Content-Type"]), _TEXT), _CHALLENGE, _CHALLENGE,
    st.tuples(st.sampled_from(["CSeq", "Content-Length", "WWW-Authenticate", "Server"]), _WILD),
)
_ANSWER = st.tuples(
    st.sampled_from(["200", "200", "200", "401", "401", "401", "404", "503", "2000", "\u00b2\u00b2\u00b2"]), _TEXT,
    st.sampled_from(["right"] * 8 + ["missing", "wrong"]), st.lists(_HEADER, max_size=3),
    st.sampled_from([b"", SDP, AUDIO_SDP, b"\x00" * 40]), st.sampled_from([True, True, True, False]),
    st.integers(1, 50))


@settings(max_examples=500, deadline=None)
@given(st.lists(_ANSWER, min_size=1, max_size=6))
def test_no_answers_crash_the_conversation(script):
    """Whole conversations with odd answers: it ends or waits, never raises, never loops on a password."""
    s = new()
    sent = 0
    passwords = 0
    for status, reason, cseq, headers, body, with_length, chunk in script:
        out = s.next_request()
        if out is not None:
            sent += 1
            passwords += b"Authorization:" in out
        head = [*({"right": [("CSeq", str(sent))], "wrong": [("CSeq", str(sent + 1))]}.get(cseq, [])), *headers]
        if with_length and body:
            head.append(("Content-Length", str(len(body))))
        message = (f"RTSP/1.0 {status} {reason}\r\n".encode()
                   + b"".join(f"{k}: {v}\r\n".encode() for k, v in head) + b"\r\n" + body)
        for piece in pieces(message, chunk):
            s.receive(piece)
            _assert_bounded(s)
        if s.result is not None:
            break
    assert sent <= 4 and passwords <= 2
    event(f"{s.result.outcome} at {s.result.step}" if s.result else "waiting")
    assert s.timed_out().outcome in set(ProbeOutcome)
