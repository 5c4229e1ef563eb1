"""The real probes (RTSP, ONVIF, ffmpeg grab, link check) against the camera twins on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest

from drivers.camera import rtsp
from drivers.camera.base import Credentials, GrabError, OnvifAuthError, OnvifUnreachable, ProbeOutcome
from drivers.camera.grab import FfmpegGrabber, Verdict, judge
from drivers.camera.link import SysfsLinkCheck
from drivers.camera.onvif import HttpOnvifClient
from drivers.camera.probe import TcpRtspProber
from sim.cameras import Mode, SimCamera, SimGrabber, _closed_port
from tests.test_rtsp_session import PASSWORD, USER, PaperCamera

STEP = 1.0  # per-step timeout, far above a loopback answer so a loaded machine does not flake (no duration asserted)
PROBER = TcpRtspProber(connect_timeout_s=1.0, step_timeout_s=STEP)


@pytest.fixture
async def cam() -> AsyncIterator[SimCamera]:
    c = await SimCamera(id="c1").start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.mark.parametrize(("mode", "outcome", "step"), [
    (Mode.HEALTHY, ProbeOutcome.OK, "auth"),
    (Mode.UNREACHABLE, ProbeOutcome.UNREACHABLE, "connect"),
    (Mode.HUNG, ProbeOutcome.TIMEOUT, "options"),
    (Mode.UNAUTHORIZED, ProbeOutcome.AUTH_FAILED, "auth"),
    (Mode.NOT_FOUND, ProbeOutcome.NOT_FOUND, "auth"),
    (Mode.SLOW, ProbeOutcome.TIMEOUT, "options"),
])
async def test_every_mode(mode, outcome, step):
    c = await SimCamera(mode=mode, delay_s=STEP * 3).start()
    try:
        r = await PROBER.probe(c.url, c.credentials)
        assert (r.outcome, r.step) == (outcome, step), r
        if mode is Mode.UNAUTHORIZED:
            assert c.password_attempts == 1  # one answer to one challenge, never a retry
    finally:
        await c.stop()


async def test_slow_but_within_the_timeout_is_ok():
    c = await SimCamera(mode=Mode.SLOW, delay_s=0.01).start()
    try:
        r = await TcpRtspProber(step_timeout_s=5.0).probe(c.url, c.credentials)
        assert r.outcome is ProbeOutcome.OK
    finally:
        await c.stop()


async def test_flapping_alternates():
    c = await SimCamera(mode=Mode.FLAPPING, flap_every=1).start()
    try:
        outcomes = [(await PROBER.probe(c.url, c.credentials)).outcome for _ in range(4)]
        assert outcomes == [ProbeOutcome.OK, ProbeOutcome.UNREACHABLE] * 2
    finally:
        await c.stop()


async def test_unreachable_then_back(cam):
    await cam.set_mode(Mode.UNREACHABLE)
    assert (await PROBER.probe(cam.url, cam.credentials)).outcome is ProbeOutcome.UNREACHABLE
    await cam.set_mode(Mode.HEALTHY)
    assert (await PROBER.probe(cam.url, cam.credentials)).outcome is ProbeOutcome.OK


async def test_wrong_password_and_none(cam):
    r = await PROBER.probe(cam.url, Credentials(cam.user, "wrong"))
    assert r.outcome is ProbeOutcome.AUTH_FAILED and r.status == 401
    r = await PROBER.probe(cam.url, None)
    assert r.outcome is ProbeOutcome.AUTH_REQUIRED
    r = await PROBER.probe(cam.url, cam.credentials, send_credentials=False)
    assert r.outcome is ProbeOutcome.AUTH_REQUIRED
    assert cam.password_attempts == 1  # only the wrong one; held-back probes send nothing


async def test_basic_auth_and_no_auth():
    for scheme in ("basic", "none"):
        c = await SimCamera(scheme=scheme).start()
        try:
            assert (await PROBER.probe(c.url, c.credentials)).outcome is ProbeOutcome.OK
        finally:
            await c.stop()


async def test_wrong_path_is_404(cam):
    r = await PROBER.probe(cam.url.replace("102", "103"), cam.credentials)
    assert r.outcome is ProbeOutcome.NOT_FOUND


async def test_probe_leaves_no_connection_open(cam):
    me = psutil.Process(os.getpid())
    for _ in range(5):
        assert (await PROBER.probe(cam.url, cam.credentials)).outcome is ProbeOutcome.OK
    # our side of every probe connection is closed (the twin's side follows when it reads EOF)
    open_to_cam = [c for c in me.net_connections("tcp") if c.raddr and c.raddr.port == cam.port
                   and c.status == psutil.CONN_ESTABLISHED]
    assert open_to_cam == []
    assert cam.connections == 5


# ------------------------------------------- odd firmware over real TCP (the session's rules, end to end)
@contextlib.asynccontextmanager
async def scripted(answer: Callable[[rtsp.Request], bytes]) -> AsyncIterator[str]:
    """A loopback RTSP peer that answers each request with `answer(request)` and keeps the connection."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        parser = rtsp.MessageParser()
        try:
            while data := await reader.read(4096):
                for msg in parser.feed(data):
                    writer.write(answer(rtsp.parse_request(msg)))
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"rtsp://127.0.0.1:{server.sockets[0].getsockname()[1]}/Streaming/Channels/102"
    finally:
        server.close()
        async with asyncio.timeout(10):  # the probe closed its side: each handler reads EOF and ends
            await asyncio.gather(*handlers, return_exceptions=True)


def _then(first: Callable[[rtsp.Request], bytes], describe: bytes) -> Callable[[rtsp.Request], bytes]:
    """OPTIONS answered by `first`'s camera, every DESCRIBE with the fixed bytes `describe`."""
    return lambda req: first(req) if req.method == "OPTIONS" else describe


async def test_a_stale_nonce_is_answered_once_over_tcp():
    cam = PaperCamera(stale_times=1)
    async with scripted(cam.answer) as url:
        r = await PROBER.probe(url, Credentials(USER, PASSWORD))
    assert (r.outcome, r.step, cam.password_attempts) == (ProbeOutcome.OK, "auth", 2)


@pytest.mark.parametrize(("describe", "detail"), [
    (b"RTSP/1.0 200 OK\r\nCSeq: 9\r\n\r\n", "wrong CSeq: answer has 9, request had 2"),
    (b"RTSP/1.0 200 OK\r\nCSeq: \xc2\xb2\r\n\r\n", "wrong CSeq: answer has \u00b2, request had 2"),
    (b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 3\r\nContent-Length: 300\r\n\r\nabc",
     "conflicting Content-Length values [3, 300]"),
    (b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: \xc2\xb2\r\n\r\nab", "bad Content-Length '\u00b2'"),
    (b"RTSP/1.0 \xc2\xb2\xc2\xb2\xc2\xb2 OK\r\nCSeq: 2\r\n\r\n", "not a status line: 'RTSP/1.0 \u00b2\u00b2\u00b2 OK'"),
])
async def test_odd_answers_are_protocol_errors_not_hangs_or_crashes(describe, detail):
    async with scripted(_then(PaperCamera(scheme="none").answer, describe)) as url:
        r = await PROBER.probe(url, None)
    assert (r.outcome, r.step, r.detail) == (ProbeOutcome.PROTOCOL_ERROR, "describe", detail)


async def test_a_request_from_the_camera_is_ignored_and_peer_text_is_escaped():
    cam = PaperCamera(scheme="none", status=503, reason="Busy\u2028fake line", body=b"")

    def answer(req: rtsp.Request) -> bytes:
        ping = b"GET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\n\r\n" if req.method == "OPTIONS" else b""
        return ping + cam.answer(req)

    async with scripted(answer) as url:
        r = await PROBER.probe(url, None)
    assert (r.outcome, r.step, r.status, r.detail) == (ProbeOutcome.ERROR, "describe", 503,
                                                       "503 Busy\\u2028fake line")


# ------------------------------------------------------------------------------------------- ONVIF
async def test_onvif_time_skew_and_device_info(cam):
    cam.skew_s = 300
    client = HttpOnvifClient(timeout_s=2)
    t = await client.system_time("127.0.0.1", cam.onvif_port)
    assert abs((t - cam.clock.time()) - 300) < 5
    info = await client.device_info("127.0.0.1", cam.onvif_port, cam.credentials, skew_s=300)
    assert (info.serial, info.firmware, info.manufacturer) == (cam.serial, cam.firmware, "SimVision")
    assert info.uptime_s is not None and info.uptime_s >= 0
    cam.replace("NEWSERIAL")
    assert (await client.device_info("127.0.0.1", cam.onvif_port, cam.credentials)).serial == "NEWSERIAL"
    with pytest.raises(OnvifAuthError):
        await client.device_info("127.0.0.1", cam.onvif_port, Credentials(cam.user, "wrong"))


async def test_onvif_unreachable_and_hung(cam):
    client = HttpOnvifClient(timeout_s=STEP)
    with pytest.raises(OnvifUnreachable):
        await client.system_time("127.0.0.1", _closed())
    hung = await SimCamera(mode=Mode.HUNG, onvif=False).start()
    try:
        with pytest.raises(OnvifUnreachable):
            await client.system_time("127.0.0.1", hung.port)  # an RTSP twin that never answers
    finally:
        await hung.stop()


def _closed() -> int:
    return _closed_port()


# -------------------------------------------------------------------------------------------- grabs
async def test_sim_grab_moving_black_frozen(cam, tmp_path):
    grabber = SimGrabber([cam], tmp_path / "videos", timeout_s=20)
    first = await grabber.grab(cam.url, cam.credentials)
    second = await grabber.grab(cam.url, cam.credentials)
    assert judge(first, None) is Verdict.OK and judge(second, first) is Verdict.OK
    cam.picture = "black"
    assert judge(await grabber.grab(cam.url, cam.credentials), second) is Verdict.BLACK
    cam.picture = "frozen"
    a = await grabber.grab(cam.url, cam.credentials)
    b = await grabber.grab(cam.url, cam.credentials)
    assert judge(b, a) is Verdict.FROZEN
    with pytest.raises(GrabError):
        await grabber.grab(cam.url, Credentials(cam.user, "wrong"))
    assert grabber.real.peak == 1


async def test_grab_of_a_hung_camera_is_killed_and_redacted():
    hung = await SimCamera(mode=Mode.HUNG).start()
    grabber = FfmpegGrabber(timeout_s=1.0)
    secret = Credentials("admin", "Top-Secret-9")
    try:
        with pytest.raises(GrabError) as exc:
            await grabber.grab(hung.url, secret)
        assert "Top-Secret-9" not in str(exc.value)
        assert grabber.running == 0
        kids = [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]
        assert kids == []
    finally:
        await hung.stop()


async def test_grab_error_output_is_redacted():
    closed = _closed()
    grabber = FfmpegGrabber(timeout_s=10.0)
    with pytest.raises(GrabError) as exc:
        await grabber.grab(f"rtsp://127.0.0.1:{closed}/x", Credentials("admin", "Top-Secret-9"))
    assert "Top-Secret-9" not in str(exc.value) and "admin:" not in str(exc.value)


async def test_at_most_n_ffmpeg_at_once(tmp_path):
    cams = [await SimCamera(id=f"c{i}").start() for i in range(4)]
    grabber = SimGrabber(cams, tmp_path / "videos", concurrency=2)
    try:
        await asyncio.gather(*(grabber.grab(c.url, c.credentials) for c in cams))
        assert 1 <= grabber.real.peak <= 2
    finally:
        for c in cams:
            await c.stop()


# --------------------------------------------------------------------------------------- link check
def _route_table(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    p = tmp_path / "route"
    lines = ["Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT"]
    lines += [f"{i}\t{d}\t00000000\t0001\t0\t0\t0\t{m}\t0\t0\t0" for i, d, m in rows]
    p.write_text("\n".join(lines) + "\n")
    return p


def test_link_check_reads_route_and_carrier(tmp_path):
    net = tmp_path / "net"
    (net / "eth0").mkdir(parents=True)
    (net / "eth0" / "carrier").write_text("1\n")
    # 192.168.1.0/24 on eth0 (little-endian hex as the kernel prints it), default via wwan0
    route = _route_table(tmp_path, [("eth0", "0001A8C0", "00FFFFFF"), ("wwan0", "00000000", "00000000")])
    (net / "wwan0").mkdir()
    (net / "wwan0" / "carrier").write_text("1\n")
    check = SysfsLinkCheck(route, net)
    assert check.lan_up(["192.168.1.64"]) is True
    (net / "eth0" / "carrier").write_text("0\n")
    assert check.lan_up(["192.168.1.64"]) is False  # cable out on the camera side, 4G still up
    assert check.lan_up(["cam.local"]) is None  # names are not resolved here
    assert check.lan_up(["127.0.0.1"]) is None
    no_route = _route_table(tmp_path, [])
    assert SysfsLinkCheck(no_route, net).lan_up(["192.168.1.64"]) is False
    assert SysfsLinkCheck(tmp_path / "missing", net).lan_up(["192.168.1.64"]) is None
