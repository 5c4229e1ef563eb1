"""The sans-I/O parts of the camera drivers: RTSP framing and auth, ONVIF bodies, redaction, picture maths."""

from __future__ import annotations

import ast
import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.camera import onvif, rtsp
from drivers.camera.base import Credentials, CredentialsError, Frame, OnvifAuthError, OnvifFault
from drivers.camera.grab import PictureThresholds, Verdict, crop_filter, difference, judge
from drivers.camera.redact import redact_text, redact_url, with_userinfo

REPO = Path(__file__).resolve().parent.parent

DESCRIBE_OK = rtsp.response(200, "OK", 2, [("Content-Type", "application/sdp")],
                            b"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
CHALLENGE = rtsp.response(401, "Unauthorized", 3, [
    ("WWW-Authenticate", 'Basic realm="cam"'),
    ("WWW-Authenticate", 'Digest realm="IP Camera(C6496)", nonce="a1b2c3", qop="auth", algorithm=MD5, stale=FALSE'),
])


def test_codec_imports_no_io():
    for name in ("rtsp.py", "redact.py", "base.py"):
        tree = ast.parse((REPO / "drivers" / "camera" / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"asyncio", "socket", "serial", "bleak", "gpiozero", "subprocess"}, name


def test_the_probe_io_layer_holds_no_protocol():
    """probe.py writes what the session says and feeds it what it reads: it uses no framing or auth of its own."""
    tree = ast.parse((REPO / "drivers" / "camera" / "probe.py").read_text())
    used = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "rtsp"}
    assert used == {"split_url", "ProbeSession", "SessionResult"}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str | bytes)}
    assert not {"OPTIONS", "DESCRIBE", b"\r\n", "Authorization", "CSeq"} & strings


def test_drivers_never_import_agent():
    for path in (REPO / "drivers" / "camera").glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m == "agent" or m.startswith("agent.") for m in mods), path


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_response_framing_whole_and_in_pieces(chunk):
    stream = rtsp.response(200, "OK", 1, [("Public", "OPTIONS, DESCRIBE")]) + DESCRIBE_OK + CHALLENGE
    parser = rtsp.MessageParser()
    msgs: list[rtsp.Message] = []
    if chunk is None:
        msgs = parser.feed(stream)
    else:
        for i in range(0, len(stream), chunk):
            msgs += parser.feed(stream[i:i + chunk])
    resps = [rtsp.parse_response(m) for m in msgs]
    assert [(r.status, r.cseq) for r in resps] == [(200, 1), (200, 2), (401, 3)]
    assert rtsp.sdp_has_video(resps[1].body)
    assert len(resps[2].message.header_all("www-authenticate")) == 2


def test_request_round_trip():
    raw = rtsp.request("DESCRIBE", "rtsp://10.0.0.5/Streaming/Channels/102", 7, [("Accept", "application/sdp")])
    (msg,) = rtsp.MessageParser().feed(raw)
    req = rtsp.parse_request(msg)
    assert (req.method, req.url, msg.header("cseq"), msg.header("ACCEPT")) == (
        "DESCRIBE", "rtsp://10.0.0.5/Streaming/Channels/102", "7", "application/sdp")


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 200 OK\r\n\r\n" b"",  # parsed as a message but not a status line we accept below
    b"\x00\x01\x02 binary\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nContent-Length: x\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nno colon here\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n",
    b"$\x00\x00\x10",
])
def test_garbage_is_a_typed_error(garbage):
    with pytest.raises(rtsp.RtspProtocolError):
        for m in rtsp.MessageParser().feed(garbage):
            rtsp.parse_response(m)


def test_head_size_limit():
    parser = rtsp.MessageParser()
    with pytest.raises(rtsp.RtspProtocolError):
        parser.feed(b"RTSP/1.0 200 OK\r\nX: " + b"a" * (rtsp.MAX_HEAD_BYTES + 10))


@pytest.mark.parametrize(("head", "length"), [
    (b"Content-Length: 3\r\nContent-Length: 3\r\n", 3),  # identical duplicates are read as one (RFC 7230 3.3.2)
    (b"Content-Length: 3, 3\r\n", 3),
    (b"content-length: 03\r\nCONTENT-LENGTH: 3\r\n", 3),  # the same decimal value
    (b"Content-Length: 3\r\nContent-Length: 4\r\n", None),  # conflicting: unrecoverable (RFC 7230 3.3.3)
    (b"Content-Length: 3, 4\r\n", None),
    (b"Content-Length: 3\r\nContent-Length: x\r\n", None),
    (b"Content-Length: \xc2\xb2\r\n", None),  # a superscript two is a digit to str.isdigit(), not to int()
    (b"Content-Length: " + b"9" * 5000 + b"\r\n", None),  # over int()'s digit limit: an error, not a ValueError
])
def test_content_length_duplicates(head, length):
    raw = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n" + head + b"\r\nabcd"
    if length is None:
        with pytest.raises(rtsp.RtspProtocolError):
            rtsp.MessageParser().feed(raw)
        return
    parser = rtsp.MessageParser()
    (msg,) = parser.feed(raw)
    assert msg.body == b"abc" and parser.buffered == 1


@pytest.mark.parametrize("start", [b"RTSP/1.0 \xc2\xb2\xc2\xb2\xc2\xb2 OK", b"RTSP/1.0 20 OK", b"RTSP/1.0 2000 OK"])
def test_status_code_is_three_ascii_digits(start):
    (msg,) = rtsp.MessageParser().feed(start + b"\r\n\r\n")
    with pytest.raises(rtsp.RtspProtocolError):
        rtsp.parse_response(msg)


def test_header_lines_are_checked():
    for bad in (b"RTSP/1.0 200 OK\r\nX\x00: 1\r\n\r\n", b"RTSP/1.0 200 OK\r\nX: a\rb\r\n\r\n",
                b"RTSP/1.0 200 OK\r\n folded: first\r\n\r\n", b"RTSP/1.0 200 OK\r\nBad Name: 1\r\n\r\n"):
        with pytest.raises(rtsp.RtspProtocolError):
            rtsp.MessageParser().feed(bad)
    (msg,) = rtsp.MessageParser().feed(b"RTSP/1.0 200 OK\r\nServer: a\r\n  b\r\nX :\tv\t\r\n\r\n")
    assert msg.headers == (("Server", "a b"), ("X", "v"))
    (msg,) = rtsp.MessageParser().feed(b"RTSP/1.0 200 OK\r\nServer: \xba\xa3\xbf\xb5\r\n\r\n")  # GBK
    assert msg.header("server") == "\xba\xa3\xbf\xb5"  # read as Latin-1 rather than refused


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_no_input_crashes_or_grows_the_buffer(chunks):
    parser = rtsp.MessageParser()
    for c in chunks:
        try:
            for m in parser.feed(c):
                try:
                    rtsp.parse_response(m)
                except rtsp.RtspProtocolError:
                    pass
        except rtsp.RtspProtocolError:
            parser = rtsp.MessageParser()
        assert parser.buffered <= rtsp.MAX_HEAD_BYTES + rtsp.MAX_BODY_BYTES + 200


def test_digest_rfc2617_vector():
    # RFC 2617 section 3.5 (method GET); the computation is the same for RTSP
    assert rtsp.digest_response(algorithm="MD5", user="Mufasa", realm="testrealm@host.com",
                                password="Circle Of Life", method="GET", uri="/dir/index.html",
                                nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth", nc="00000001",
                                cnonce="0a4f113b") == "6629fae49393a05397450978507c4ef1"


def test_digest_rfc7616_sha256_vector():
    # RFC 7616 section 3.9.1
    assert rtsp.digest_response(algorithm="SHA-256", user="Mufasa", realm="http-auth@example.org",
                                password="Circle of Life", method="GET", uri="/dir/index.html",
                                nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth",
                                nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
                                ) == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_authorization_prefers_digest_and_quotes():
    (msg,) = rtsp.MessageParser().feed(CHALLENGE)
    ch = rtsp.pick_challenge(msg.header_all("WWW-Authenticate"))
    assert ch is not None and ch.scheme == "digest" and ch.realm == "IP Camera(C6496)"
    value = rtsp.authorization(ch, user="admin", password="pw", method="DESCRIBE", uri="rtsp://h/p", cnonce="ab")
    back = rtsp.parse_challenge(value)
    assert back.params["username"] == "admin" and back.params["qop"] == "auth" and back.params["nc"] == "00000001"
    expected = rtsp.digest_response(algorithm="MD5", user="admin", realm="IP Camera(C6496)", password="pw",
                                    method="DESCRIBE", uri="rtsp://h/p", nonce="a1b2c3", qop="auth",
                                    nc="00000001", cnonce="ab")
    assert back.params["response"] == expected
    basic = rtsp.authorization(rtsp.Challenge("basic"), user="u", password="p:w", method="", uri="", cnonce="")
    assert basic == "Basic " + base64.b64encode(b"u:p:w").decode()
    with pytest.raises(rtsp.RtspAuthError):
        rtsp.authorization(rtsp.Challenge("digest", {"qop": "auth-int"}), user="u", password="p",
                           method="DESCRIBE", uri="x", cnonce="c")
    assert rtsp.pick_challenge(['Digest realm="x", algorithm=SHA-512-256', "Bearer x"]) is None


def test_split_url_strips_userinfo():
    t = rtsp.split_url("rtsp://admin:pw@192.168.1.64/Streaming/Channels/102")
    assert (t.host, t.port, t.url) == ("192.168.1.64", 554, "rtsp://192.168.1.64/Streaming/Channels/102")
    assert rtsp.split_url("rtsp://h:8554").url == "rtsp://h:8554/"
    for bad in ("http://h/x", "rtsp:///x", "rtsp://h:99999/x"):
        with pytest.raises(ValueError):
            rtsp.split_url(bad)


# ------------------------------------------------------------------------------------------ ONVIF
def test_username_token_digest():
    created = datetime(2026, 11, 23, 8, 0, 0, tzinfo=UTC)
    nonce = b"0123456789abcdef"
    token = onvif.username_token(Credentials("admin", "pw"), created, nonce)
    want = base64.b64encode(hashlib.sha1(nonce + b"2026-11-23T08:00:00Z" + b"pw").digest()).decode()
    assert want in token and "<wsse:Username>admin</wsse:Username>" in token
    assert "pw<" not in token


def test_parse_system_time_and_device_info():
    body = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="x"><s:Body>'
            b"<tds:GetSystemDateAndTimeResponse xmlns:tds='y'><tds:SystemDateAndTime><tt:UTCDateTime>"
            b"<tt:Date><tt:Year>2026</tt:Year><tt:Month>11</tt:Month><tt:Day>23</tt:Day></tt:Date>"
            b"<tt:Time><tt:Hour>8</tt:Hour><tt:Minute>0</tt:Minute><tt:Second>5</tt:Second></tt:Time>"
            b"</tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></s:Body></s:Envelope>")
    assert onvif.parse_system_time(body) == datetime(2026, 11, 23, 8, 0, 5, tzinfo=UTC).timestamp()
    info = onvif.parse_device_info(
        b"<E><B><GetDeviceInformationResponse><Manufacturer>H</Manufacturer><Model>M</Model>"
        b"<FirmwareVersion>V5</FirmwareVersion><SerialNumber>SN1</SerialNumber><HardwareId>88</HardwareId>"
        b"<UpTime>P1DT2H</UpTime></GetDeviceInformationResponse></B></E>")
    assert (info.serial, info.firmware, info.uptime_s) == ("SN1", "V5", 93600.0)
    with pytest.raises(OnvifAuthError):
        onvif.parse_device_info(b"<E><Fault><Code><Value>s:Sender</Value><Subcode><Value>ter:NotAuthorized"
                                b"</Value></Subcode></Code></Fault></E>")
    with pytest.raises(OnvifFault):
        onvif.parse_device_info(b"not xml")
    with pytest.raises(OnvifFault):
        onvif.parse_system_time(b"<E><LocalDateTime/></E>")


def test_http_response_parsing():
    status, body = onvif.parse_http_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert (status, body) == (200, b"hello world")
    assert onvif.parse_http_response(b"HTTP/1.0 401 No\r\nContent-Length: 2\r\n\r\nabcdef") == (401, b"ab")


# --------------------------------------------------------------------------------------- redaction
def test_redaction():
    assert redact_url("rtsp://admin:Pa%40ss@10.0.0.2:554/x") == "rtsp://***@10.0.0.2:554/x"
    assert redact_url("rtsp://10.0.0.2/x") == "rtsp://10.0.0.2/x"
    text = ("[rtsp @ 0x55] method DESCRIBE failed: 401 rtsp://admin:Pa%40ss@10.0.0.2/x\n"
            "Authorization: Digest username=\"admin\", response=\"abc\"\nthe password Pa@ss leaked")
    out = redact_text(text, ["Pa@ss"])
    assert "Pa@ss" not in out and "Pa%40ss" not in out and 'response="abc"' not in out
    assert "10.0.0.2/x" in out
    url = with_userinfo("rtsp://10.0.0.2/x", "ad min", "p@ss:/w")
    assert url == "rtsp://ad%20min:p%40ss%3A%2Fw@10.0.0.2/x"
    assert "p%40ss" not in redact_text(url, ["p@ss:/w"])


def test_redaction_of_auth_tokens_without_their_header():
    token = base64.b64encode(b"admin:Pa55-Secret-77").decode()
    for text in (f'request had "Basic {token}"', f"Proxy-Authorization: Basic {token}", f"basic\t{token}."):
        out = redact_text(text)
        assert token not in out and "***" in out, out
    # a challenge is not a secret and stays readable
    assert redact_text('WWW-Authenticate: Basic realm="cam", charset="UTF-8"') == (
        'WWW-Authenticate: Basic realm="cam", charset="UTF-8"')
    # everything one probe session can hand to a log: the requests it writes, redacted, keep no secret
    session = rtsp.ProbeSession("rtsp://h/p", Credentials("admin", "Pa55-Secret-77"), cnonce="c")
    session.next_request()
    session.receive(rtsp.response(200, "OK", 1))
    session.next_request()
    session.receive(rtsp.response(401, "Unauthorized", 2, [("WWW-Authenticate", 'Basic realm="cam"')]))
    sent = (session.next_request() or b"").decode()
    assert token in sent and token not in redact_text(sent) and "Pa55-Secret-77" not in repr(session)


def test_credentials_repr_hides_the_password():
    c = Credentials.parse("admin:se:cret\n")
    assert (c.user, c.password) == ("admin", "se:cret")
    assert "se:cret" not in repr(c) and "se:cret" not in str(c)
    for bad in ("nopassword", ":pw", "a:b\nc:d"):
        with pytest.raises(CredentialsError) as exc:
            Credentials.parse(bad)
        assert "pw" not in str(exc.value) or bad == ":pw"


# ------------------------------------------------------------------------------------ picture maths
def _frame(values: list[int] | bytes) -> Frame:
    return Frame(8, 4, bytes(values))


def test_black_frozen_and_ok():
    t = PictureThresholds()
    black = _frame([3] * 32)
    assert judge(black, None, t) is Verdict.BLACK
    dark_but_detailed = _frame([0, 60] * 16)  # night scene with lights: dark mean, high spread
    assert judge(dark_but_detailed, None, t) is Verdict.OK
    scene = _frame([(i * 37) % 256 for i in range(32)])
    assert judge(scene, None, t) is Verdict.OK
    assert judge(scene, scene, t) is Verdict.FROZEN
    moved = _frame([(i * 37 + 9) % 256 for i in range(32)])
    assert judge(moved, scene, t) is Verdict.OK
    assert difference(scene, Frame(4, 8, scene.pixels)) == float("inf")
    assert crop_filter(0.12, 0.12).startswith("crop=iw:ih*0.7600:0:ih*0.1200")
