"""The RTSP health probe's I/O: TCP connect, then the sans-I/O `rtsp.ProbeSession` over the socket.

The protocol (OPTIONS -> DESCRIBE -> one answer to a 401, CSeq matching, what each answer means) lives
in drivers/camera/rtsp.py and is tested there without sockets. This module only connects, writes what
the session says, feeds it what it reads, and puts each step (request written -> answer complete) under
its own timeout. No SETUP or PLAY is ever sent, so no media session is opened and the camera's stream
budget is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from drivers.camera import rtsp
from drivers.camera.base import Credentials, ProbeOutcome, ProbeResult

READ_CHUNK = 4096
CLOSE_TIMEOUT_S = 1.0


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
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    reader, writer = await asyncio.open_connection(target.host, target.port)
            except TimeoutError:
                return _result(ProbeOutcome.TIMEOUT, "connect", started, detail="connect timed out")
            except OSError as exc:
                return _result(ProbeOutcome.UNREACHABLE, "connect", started, detail=_os_detail(exc))
            session = rtsp.ProbeSession(target.url, creds, send_credentials=send_credentials,
                                        cnonce=os.urandom(8).hex())
            done = await self._converse(session, reader, writer)
            return _result(done.outcome, done.step, started, done.status, done.detail)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await writer.wait_closed()

    async def _converse(self, session: rtsp.ProbeSession, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> rtsp.SessionResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.step_timeout_s
        while (done := session.result) is None:
            out = session.next_request()
            if out is not None:
                deadline = loop.time() + self.step_timeout_s  # each step has its own budget
                writer.write(out)
            try:
                async with asyncio.timeout_at(deadline):
                    if out is not None:
                        await writer.drain()
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                return session.timed_out()
            except OSError as exc:
                return session.connection_lost(_os_detail(exc))
            session.receive(data)
        return done


def _os_detail(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _result(outcome: ProbeOutcome, step: str, started: float, status: int | None = None,
            detail: str = "") -> ProbeResult:
    return ProbeResult(outcome, step, status, detail, round(time.monotonic() - started, 4))
