"""Camera twins on loopback: real RTSP (OPTIONS/DESCRIBE with Digest or Basic) and ONVIF over TCP.

Each `SimCamera` listens on 127.0.0.1 and behaves like a camera in one of these modes:
healthy, unreachable (the port is closed), hung (accepts TCP, never answers), unauthorized (401 to
every password: the camera's password was changed), not_found (404: wrong stream path), slow
(answers after `delay_s`), flapping (alternates `flap_every` good connections and dropped ones).
`reboot()` and `replace()` change what the twin's ONVIF endpoint reports (uptime, serial).

Pictures: the twin serves no RTP. `SimGrabber` satisfies the FrameGrabber Protocol by running the
real ffmpeg grab against a small local video file chosen by the camera's `picture`
("moving" | "black" | "frozen"), so black and frozen detection run on real decoded frames. A real
RTSP server (GStreamer) is used for the end-to-end grab in tests/test_camera_real_rtsp.py.

Every twin keeps a history of what it was asked (method, whether credentials were sent and
accepted), so tests can check that a refused password is not retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from agent.clock import Clock, SystemClock
from drivers.camera import rtsp
from drivers.camera.base import CameraProbes, Credentials, Frame, GrabError
from drivers.camera.grab import FfmpegGrabber
from drivers.camera.onvif import HttpOnvifClient
from drivers.camera.probe import TcpRtspProber

SDP = (
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=sim camera\r\nt=0 0\r\n"
    b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=1\r\n"
)


class Mode(StrEnum):
    HEALTHY = "healthy"
    UNREACHABLE = "unreachable"
    HUNG = "hung"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    SLOW = "slow"
    FLAPPING = "flapping"


@dataclass(frozen=True, slots=True)
class Asked:
    t: float  # the twin's clock, wall
    method: str
    authorization: str | None  # "digest" / "basic" / None
    accepted: bool | None  # None when no credentials were sent


@dataclass
class SimCamera:
    """One camera twin. `start()` binds RTSP (and ONVIF when `onvif`) ports; `stop()` closes all."""

    id: str = "cam"
    user: str = "admin"
    password: str = "s3cret-Pw"
    path: str = "/Streaming/Channels/102"
    scheme: str = "digest"  # or "basic", or "none"
    mode: Mode = Mode.HEALTHY
    delay_s: float = 2.0  # for SLOW
    flap_every: int = 1  # FLAPPING: this many good connections, then as many dropped
    picture: str = "moving"  # for SimGrabber: moving | black | frozen
    onvif: bool = True
    serial: str = "DS-2CD2T47G2-L20230101AACH000001"
    firmware: str = "V5.7.3 build 220112"
    model: str = "DS-2CD2T47G2-L"
    skew_s: float = 0.0
    clock: Clock = field(default_factory=SystemClock)
    port: int = 0
    onvif_port: int = 0
    history: list[Asked] = field(default_factory=list)
    connections: int = 0
    booted_at: float = 0.0
    _server: asyncio.Server | None = None
    _onvif_server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _nonce: int = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.user, self.password)

    def write_credentials(self, path: Path, password: str | None = None) -> Path:
        """A credentials file for the agent (mode 0600); `password` to configure a wrong one."""
        path.write_text(f"{self.user}:{self.password if password is None else password}\n")
        path.chmod(0o600)
        return path

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> SimCamera:
        if not self.booted_at:
            self.booted_at = self.clock.time()
        if self.mode is not Mode.UNREACHABLE:
            await self._listen()
        elif not self.port:
            self.port = _closed_port()
        if self.onvif and self._onvif_server is None:
            self._onvif_server = await asyncio.start_server(self._onvif_handle, "127.0.0.1", self.onvif_port)
            self.onvif_port = self._onvif_server.sockets[0].getsockname()[1]
        return self

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.UNREACHABLE:
            await self._close_rtsp()
        else:
            await self._listen()

    async def _close_rtsp(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._drop_handlers()

    async def _drop_handlers(self) -> None:
        tasks = list(self._handlers)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def stop(self) -> None:
        await self._close_rtsp()
        if self._onvif_server is not None:
            self._onvif_server.close()
            self._onvif_server = None
        await self._drop_handlers()

    def reboot(self) -> None:
        self.booted_at = self.clock.time()

    def replace(self, serial: str) -> None:
        self.serial = serial
        self.reboot()

    # ------------------------------------------------------------------ RTSP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            if self.mode is Mode.FLAPPING and ((self.connections - 1) // self.flap_every) % 2 == 1:
                return  # dropped: the probe sees the connection close
            parser = rtsp.MessageParser()
            while data := await reader.read(4096):
                for msg in parser.feed(data):
                    if self.mode is Mode.HUNG:
                        continue
                    req = rtsp.parse_request(msg)
                    if self.mode is Mode.SLOW:
                        await asyncio.sleep(self.delay_s)
                    writer.write(self._answer(req))
                    await writer.drain()
        except (OSError, rtsp.RtspProtocolError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    def _answer(self, req: rtsp.Request) -> bytes:
        cseq = _cseq(req.message)
        if req.method == "OPTIONS":
            return rtsp.response(200, "OK", cseq, [("Public", "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN")])
        if req.method != "DESCRIBE":
            return rtsp.response(405, "Method Not Allowed", cseq)
        auth = req.message.header("Authorization")
        if self.scheme != "none":
            if auth is None:
                self.history.append(Asked(self.clock.time(), "DESCRIBE", None, None))
                return rtsp.response(401, "Unauthorized", cseq, [("WWW-Authenticate", self._challenge())])
            ok = self.mode is not Mode.UNAUTHORIZED and self._check(auth, req)
            self.history.append(Asked(self.clock.time(), "DESCRIBE", auth.split(" ", 1)[0].lower(), ok))
            if not ok:
                return rtsp.response(401, "Unauthorized", cseq, [("WWW-Authenticate", self._challenge())])
        else:
            self.history.append(Asked(self.clock.time(), "DESCRIBE", None, None))
        if self.mode is Mode.NOT_FOUND or rtsp.split_url(req.url).url.split("/", 3)[-1] != self.path.lstrip("/"):
            return rtsp.response(404, "Not Found", cseq)
        return rtsp.response(200, "OK", cseq, [("Content-Type", "application/sdp"), ("Content-Base", req.url)], SDP)

    def _challenge(self) -> str:
        if self.scheme == "basic":
            return 'Basic realm="sim"'
        self._nonce += 1
        return f'Digest realm="sim", nonce="{os.urandom(8).hex()}{self._nonce}", qop="auth", algorithm=MD5'

    def _check(self, header: str, req: rtsp.Request) -> bool:
        got = rtsp.parse_challenge(header)  # same key=value syntax as a challenge
        if got.scheme == "basic":
            return self.scheme == "basic" and header.split(" ", 1)[1] == rtsp.authorization(
                got, user=self.user, password=self.password, method="", uri="", cnonce="").split(" ", 1)[1]
        if got.scheme != "digest" or self.scheme != "digest":
            return False
        p = got.params
        try:
            expected = rtsp.digest_response(
                algorithm=p.get("algorithm", "MD5"), user=self.user, realm=p.get("realm", ""),
                password=self.password, method=req.method, uri=p.get("uri", ""), nonce=p.get("nonce", ""),
                qop=p.get("qop"), nc=p.get("nc", ""), cnonce=p.get("cnonce", ""))
        except rtsp.RtspAuthError:
            return False
        return p.get("username") == self.user and p.get("response") == expected

    @property
    def password_attempts(self) -> int:
        """DESCRIBEs that carried credentials (each one counts towards a camera's lock-out)."""
        return sum(1 for a in self.history if a.authorization is not None)

    # ------------------------------------------------------------------ ONVIF
    async def _onvif_handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            body = await reader.readexactly(length)
            status, xml = self._onvif_answer(body)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/soap+xml\r\n"
                         f"Content-Length: {len(xml)}\r\nConnection: close\r\n\r\n".encode() + xml)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    def _onvif_answer(self, body: bytes) -> tuple[int, bytes]:
        env = ('<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
               'xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema">'
               "<s:Body>{}</s:Body></s:Envelope>")
        if b"GetSystemDateAndTime" in body:
            t = datetime.fromtimestamp(self.clock.time() + self.skew_s, UTC)
            dt = (f"<tt:Date><tt:Year>{t.year}</tt:Year><tt:Month>{t.month}</tt:Month><tt:Day>{t.day}</tt:Day>"
                  f"</tt:Date><tt:Time><tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute>"
                  f"<tt:Second>{t.second}</tt:Second></tt:Time>")
            return 200, env.format("<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
                                   f"<tt:UTCDateTime>{dt}</tt:UTCDateTime></tds:SystemDateAndTime>"
                                   "</tds:GetSystemDateAndTimeResponse>").encode()
        if b"GetDeviceInformation" in body:
            if not self._onvif_auth_ok(body):
                fault = ("<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>ter:NotAuthorized"
                         "</s:Value></s:Subcode></s:Code><s:Reason><s:Text>Sender not authorized</s:Text>"
                         "</s:Reason></s:Fault>")
                return 400, env.format(fault).encode()
            uptime = int(self.clock.time() - self.booted_at)
            return 200, env.format(
                "<tds:GetDeviceInformationResponse><tds:Manufacturer>SimVision</tds:Manufacturer>"
                f"<tds:Model>{self.model}</tds:Model><tds:FirmwareVersion>{self.firmware}</tds:FirmwareVersion>"
                f"<tds:SerialNumber>{self.serial}</tds:SerialNumber><tds:HardwareId>88</tds:HardwareId>"
                f"<tds:Uptime>{uptime}</tds:Uptime></tds:GetDeviceInformationResponse>").encode()
        return 400, env.format("<s:Fault><s:Reason><s:Text>unsupported</s:Text></s:Reason></s:Fault>").encode()

    def _onvif_auth_ok(self, body: bytes) -> bool:
        def grab(tag: str) -> str | None:
            m = re.search(rf"<(?:\w+:)?{tag}[^>]*>([^<]*)</", body.decode("utf-8", "replace"))
            return m.group(1) if m else None

        user, digest, nonce, created = grab("Username"), grab("Password"), grab("Nonce"), grab("Created")
        if None in (user, digest, nonce, created) or self.mode is Mode.UNAUTHORIZED:
            return False
        expected = base64.b64encode(hashlib.sha1(
            base64.b64decode(nonce or "") + (created or "").encode() + self.password.encode()).digest()).decode()
        return user == self.user and digest == expected


def _cseq(msg: rtsp.Message) -> int | None:
    v = msg.header("CSeq")
    return int(v) if v and v.isdigit() else None


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released): connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- pictures


class SimGrabber:
    """FrameGrabber for twins: the real ffmpeg grab, reading a local file chosen by the twin's picture.

    The grab fails like a real one would when the twin would not stream (not listening, hung,
    refusing the password, wrong path).
    """

    def __init__(self, cameras: Sequence[SimCamera], cache_dir: Path, *, timeout_s: float = 15.0,
                 concurrency: int = 1) -> None:
        self._all = list(cameras)
        self.cache_dir = cache_dir
        self.real = FfmpegGrabber(timeout_s=timeout_s, concurrency=concurrency)
        self.grabs = 0

    def _camera(self, url: str) -> SimCamera | None:
        target = rtsp.split_url(url)
        for c in self._all:  # ports may have been assigned after construction
            if c.port == target.port:
                return c
        return None

    async def grab(self, url: str, creds: Credentials | None) -> Frame:
        cam = self._camera(url)
        if cam is None or cam.mode in (Mode.UNREACHABLE, Mode.HUNG, Mode.NOT_FOUND, Mode.UNAUTHORIZED):
            raise GrabError(f"no stream from {rtsp.split_url(url).url}")
        if cam.scheme != "none" and (creds is None or creds != cam.credentials):
            raise GrabError("401 Unauthorized")
        self.grabs += 1
        files = ensure_videos(self.cache_dir)
        if cam.picture == "moving":
            seek = f"{(self.grabs * 1.7) % 9:.2f}"  # a different moment on every grab
            return await self.real.grab(str(files["moving"]), None, input_args=["-ss", seek])
        return await self.real.grab(str(files[cam.picture]), None)


def ensure_videos(cache_dir: Path) -> dict[str, Path]:
    """Small test videos made once with ffmpeg's lavfi sources (not kept in the repository)."""
    specs = {
        "moving": "testsrc2=size=320x180:rate=5:duration=10",
        "black": "color=c=black:size=320x180:rate=5:duration=2",
        "frozen": "testsrc2=size=320x180:rate=1:duration=1",
    }
    out = {}
    cache_dir.mkdir(parents=True, exist_ok=True)
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    for name, src in specs.items():
        path = cache_dir / f"sim-{name}.mkv"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mkv")
            subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
                            "-c:v", "ffv1", str(tmp)], check=True, timeout=60)
            tmp.rename(path)
        out[name] = path
    return out


class SimLink:
    """LinkCheck twin: the box's LAN is up unless a test pulls the cable."""

    def __init__(self, up: bool | None = True) -> None:
        self.up = up

    def lan_up(self, hosts: Sequence[str]) -> bool | None:
        return self.up


def sim_probes(cameras: Sequence[SimCamera], cache_dir: Path, *, connect_timeout_s: float = 3.0,
               step_timeout_s: float = 5.0, grab_timeout_s: float = 15.0, link: SimLink | None = None,
               onvif_timeout_s: float = 5.0) -> CameraProbes:
    """Real RTSP prober and ONVIF client against the twins; the grabber reads the twins' pictures."""
    return CameraProbes(
        rtsp=TcpRtspProber(connect_timeout_s=connect_timeout_s, step_timeout_s=step_timeout_s),
        onvif=HttpOnvifClient(timeout_s=onvif_timeout_s),
        grabber=SimGrabber(cameras, cache_dir, timeout_s=grab_timeout_s),
        link=link or SimLink(),
    )
