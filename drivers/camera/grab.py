"""One-frame grab with ffmpeg under a hard timeout, and black / frozen picture detection.

ffmpeg decodes the first video frame, crops off the top and bottom bands (where cameras burn in the
clock and the channel name, which would otherwise make a frozen picture look alive), scales it to a
small grey thumbnail and writes raw bytes to stdout. The analysis is pure arithmetic on that
thumbnail. A semaphore keeps at most `concurrency` ffmpeg processes alive at once; a grab that
overruns its timeout is killed, never left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from drivers.camera.base import Credentials, Frame, GrabError, GrabUnavailable
from drivers.camera.redact import redact_text, with_userinfo

THUMB_W, THUMB_H = 64, 36
MAX_STDERR_BYTES = 4096


class Verdict(StrEnum):
    OK = "ok"
    BLACK = "black"
    FROZEN = "frozen"


@dataclass(frozen=True, slots=True)
class PictureThresholds:
    black_luma: float = 24.0  # mean luma (0-255) below this ...
    black_spread: float = 8.0  # ... with a standard deviation below this is a black picture
    frozen_diff: float = 0.5  # mean absolute difference to the previous grab below this is frozen


def luma_stats(frame: Frame) -> tuple[float, float]:
    px = frame.pixels
    if not px:
        return 0.0, 0.0
    mean = sum(px) / len(px)
    var = sum((p - mean) ** 2 for p in px) / len(px)
    return mean, math.sqrt(var)


def difference(a: Frame, b: Frame) -> float:
    """Mean absolute difference per pixel (0-255); infinite when the frames are not comparable."""
    if (a.width, a.height) != (b.width, b.height) or not a.pixels or len(a.pixels) != len(b.pixels):
        return math.inf
    return sum(abs(x - y) for x, y in zip(a.pixels, b.pixels, strict=True)) / len(a.pixels)


def judge(frame: Frame, previous: Frame | None, t: PictureThresholds = PictureThresholds()) -> Verdict:
    mean, spread = luma_stats(frame)
    if mean < t.black_luma and spread < t.black_spread:
        return Verdict.BLACK
    if previous is not None and difference(frame, previous) < t.frozen_diff:
        return Verdict.FROZEN
    return Verdict.OK


def crop_filter(crop_top: float, crop_bottom: float) -> str:
    keep = max(0.05, 1.0 - crop_top - crop_bottom)
    return (f"crop=iw:ih*{keep:.4f}:0:ih*{crop_top:.4f},scale={THUMB_W}:{THUMB_H}:flags=area,format=gray")


class FfmpegGrabber:
    """The real grabber. Satisfies drivers.camera.base.FrameGrabber.

    `input_args` go before `-i` (the sim passes `-ss` to pick a moment in a file). For RTSP sources
    the transport is TCP and ffmpeg's own socket timeout is set below the hard timeout.
    """

    def __init__(self, *, timeout_s: float = 15.0, concurrency: int = 1, crop_top: float = 0.12,
                 crop_bottom: float = 0.12, ffmpeg: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.crop_top, self.crop_bottom = crop_top, crop_bottom
        self.ffmpeg = ffmpeg or shutil.which("ffmpeg") or "ffmpeg"
        self._sem = asyncio.Semaphore(concurrency)
        self.running = 0  # processes alive now (observable by tests and the bench)
        self.peak = 0

    async def grab(self, url: str, creds: Credentials | None, *, input_args: Sequence[str] = ()) -> Frame:
        source, secrets = url, []
        if creds is not None and url.startswith(("rtsp://", "rtsps://")):
            source = with_userinfo(url, creds.user, creds.password)
            secrets = [creds.password, creds.user]
        args = ["-nostdin", "-hide_banner", "-loglevel", "error"]
        if url.startswith(("rtsp://", "rtsps://")):
            socket_us = int(max(1.0, self.timeout_s - 2) * 1_000_000)
            # a short stream analysis: cameras announce their codec in the SDP; this halves the grab's time
            args += ["-rtsp_transport", "tcp", "-timeout", str(socket_us),
                     "-analyzeduration", "2000000", "-probesize", "1000000"]
        args += [*input_args, "-i", source, "-frames:v", "1", "-an",
                 "-vf", crop_filter(self.crop_top, self.crop_bottom), "-f", "rawvideo", "pipe:1"]
        async with self._sem:
            return await self._run(args, secrets)

    async def _run(self, args: list[str], secrets: list[str]) -> Frame:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.ffmpeg, *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise GrabUnavailable(f"cannot start ffmpeg: {exc.strerror or exc}") from None
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            raise GrabError(f"ffmpeg gave no frame within {self.timeout_s:g}s (killed)") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
            self.running -= 1
        size = THUMB_W * THUMB_H
        if proc.returncode != 0 or len(out) < size:
            tail = err[-MAX_STDERR_BYTES:].decode("utf-8", "replace").strip().splitlines()
            detail = redact_text(tail[-1] if tail else f"exit {proc.returncode}", secrets)
            raise GrabError(f"ffmpeg: {detail[:200]}")
        return Frame(THUMB_W, THUMB_H, bytes(out[:size]))
