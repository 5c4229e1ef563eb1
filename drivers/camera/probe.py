"""The RTSP health probe: TCP connect -> OPTIONS -> DESCRIBE, each step under its own timeout.

OPTIONS alone proves little (many cameras answer it without auth and for any path); DESCRIBE says
whether this stream exists (200 / 404) and whether our credentials work (401). No SETUP or PLAY is
ever sent, so no media session is opened and the camera's stream budget is untouched. One answer to
one auth challenge per probe, never a retry loop: cameras lock accounts out after a few failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from drivers.camera import rtsp
from drivers.camera.base import Credentials, ProbeOutcome, ProbeResult

READ_CHUNK = 4096


class _Timeout(Exception):
    pass


class _Closed(Exception):
    pass


class TcpRtspProber:
    """The real prober. Satisfies drivers.camera.base.RtspProber."""

    def __init__(self, *, connect_timeout_s: float = 3.0, step_timeout_s: float = 5.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.step_timeout_s = step_timeout_s

    async def probe(self, url: str, creds: Credentials | None, *, send_credentials: bool = True) -> ProbeResult:
        started = time.monotonic()
        try:
            target = rtsp.split_url(url)
        except ValueError as exc:
            return ProbeResult(ProbeOutcome.ERROR, "connect", detail=f"bad url: {exc}")
        step = "connect"
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(target.host, target.port)
            except TimeoutError:
                return _result(ProbeOutcome.TIMEOUT, step, started, detail="connect timed out")
            except OSError as exc:
                return _result(ProbeOutcome.UNREACHABLE, step, started, detail=exc.strerror or type(exc).__name__)
            session = _Session(reader, writer, self.step_timeout_s)
            step = "options"
            resp = await session.ask("OPTIONS", target.url)
            step = "describe"
            accept = [("Accept", "application/sdp")]
            resp = await session.ask("DESCRIBE", target.url, accept)
            if resp.status == 401:
                challenge = rtsp.pick_challenge(resp.message.header_all("WWW-Authenticate"))
                if creds is None or not send_credentials:
                    return _result(ProbeOutcome.AUTH_REQUIRED, step, started, 401, "camera asks for credentials")
                if challenge is None:
                    return _result(ProbeOutcome.PROTOCOL_ERROR, step, started, 401, "no usable auth challenge")
                step = "auth"
                try:
                    value = rtsp.authorization(challenge, user=creds.user, password=creds.password,
                                               method="DESCRIBE", uri=target.url, cnonce=os.urandom(8).hex())
                except rtsp.RtspAuthError as exc:
                    return _result(ProbeOutcome.PROTOCOL_ERROR, step, started, 401, str(exc))
                resp = await session.ask("DESCRIBE", target.url, [*accept, ("Authorization", value)])
                if resp.status == 401:
                    return _result(ProbeOutcome.AUTH_FAILED, step, started, 401, "credentials refused")
            return _classify(resp, step, started)
        except _Timeout:
            return _result(ProbeOutcome.TIMEOUT, step, started, detail=f"no answer to {step}")
        except _Closed:
            return _result(ProbeOutcome.UNREACHABLE, step, started, detail=f"connection closed during {step}")
        except rtsp.RtspProtocolError as exc:
            return _result(ProbeOutcome.PROTOCOL_ERROR, step, started, detail=str(exc))
        except OSError as exc:
            return _result(ProbeOutcome.UNREACHABLE, step, started, detail=exc.strerror or type(exc).__name__)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self.reader, self.writer, self.timeout_s = reader, writer, timeout_s
        self.parser = rtsp.MessageParser()
        self.cseq = 0
        self.pending: list[rtsp.Message] = []

    async def ask(self, method: str, url: str, headers: list[tuple[str, str]] | None = None) -> rtsp.Response:
        self.cseq += 1
        self.writer.write(rtsp.request(method, url, self.cseq, headers))
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.writer.drain()
                while True:
                    while self.pending:
                        resp = rtsp.parse_response(self.pending.pop(0))
                        if resp.cseq in (None, self.cseq):
                            return resp
                    data = await self.reader.read(READ_CHUNK)
                    if not data:
                        raise _Closed
                    self.pending += self.parser.feed(data)
        except TimeoutError:
            raise _Timeout from None


def _classify(resp: rtsp.Response, step: str, started: float) -> ProbeResult:
    if resp.status == 200:
        if rtsp.sdp_has_video(resp.body):
            return _result(ProbeOutcome.OK, step, started, 200)
        return _result(ProbeOutcome.NO_VIDEO, step, started, 200, "SDP has no video stream")
    if resp.status == 404:
        return _result(ProbeOutcome.NOT_FOUND, step, started, 404, "stream path not found")
    return _result(ProbeOutcome.ERROR, step, started, resp.status, f"{resp.status} {resp.reason}"[:80])


def _result(outcome: ProbeOutcome, step: str, started: float, status: int | None = None,
            detail: str = "") -> ProbeResult:
    return ProbeResult(outcome, step, status, detail, round(time.monotonic() - started, 4))
