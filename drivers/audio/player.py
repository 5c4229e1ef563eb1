"""The real audio player: ffmpeg decodes, aplay plays to ALSA; both are child processes in one group.

Why subprocesses and why these two:
- `aplay` (alsa-utils, on every box) is the reference ALSA client: it negotiates the device (plug
  conversion, period sizes) the way ALSA intends and reports device errors plainly. A PCM WAV goes to it
  directly, with no decoder in the path.
- `ffmpeg` decodes everything else (MP3, Ogg/Opus, Ogg/Vorbis) to raw 16-bit PCM on a pipe into aplay.
  One decoder for every format the county may send, and it also does software gain.
- A child process can be killed whatever state it is in. A hung decoder or a stuck ALSA write inside
  a Python library (PyAV, sounddevice) would hang the event loop's thread; a process group dies to one
  `killpg`. The cost is a fork per clip, which is nothing next to a loudspeaker announcement.
Volume: with a mixer control named in the profile, `amixer sset` before and the old level restored after;
without one, ffmpeg's `volume` filter (software gain). Child stderr is drained into a bounded buffer and
only a sanitised excerpt ever reaches the (debug) log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import tempfile
import time
from pathlib import Path

from drivers.aio import wait_within
from drivers.audio.base import MAX_VOLUME, PlaybackError, PlayResult
from drivers.audio.media import canonical_mime, wav_file_duration

log = logging.getLogger("drivers.audio")

STDERR_KEEP = 2048  # bytes of child stderr kept per process (the tail)
KILL_GRACE_S = 0.5  # SIGTERM, then SIGKILL after this
PROBE_TIMEOUT_S = 5.0
MIXER_TIMEOUT_S = 3.0
RAW_RATE, RAW_CHANNELS = 48000, 2
_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


def sanitize(raw: bytes, limit: int = 200) -> str:
    """Last line of a child's stderr as printable ASCII, bounded: safe for a debug log line."""
    lines = [ln for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
    return _PRINTABLE.sub("?", lines[-1])[:limit] if lines else ""


def mixer_ctl(device: str) -> str:
    """The control device for an ALSA PCM name: `plughw:1,0` -> `hw:1`; anything else -> `default`."""
    m = re.match(r"^(?:plug)?hw:(?:CARD=)?([^,]+)", device)
    return f"hw:{m.group(1)}" if m else "default"


class AlsaPlayer:
    def __init__(self, device: str = "default", mixer: str | None = None, *, mixer_device: str | None = None,
                 hang_factor: float = 1.5, hang_slack_s: float = 10.0, tmp_dir: Path | None = None,
                 aplay: str = "aplay", ffmpeg: str = "ffmpeg", ffprobe: str = "ffprobe",
                 amixer: str = "amixer") -> None:
        self.device = device
        self.mixer = mixer
        self.mixer_device = mixer_device or mixer_ctl(device)
        self.hang_factor = hang_factor
        self.hang_slack_s = hang_slack_s
        self.tmp_dir = tmp_dir
        self.aplay, self.ffmpeg, self.ffprobe, self.amixer = aplay, ffmpeg, ffprobe, amixer

    # -- the Protocol --------------------------------------------------------------------------------
    async def play(self, source: Path | bytes, mime: str, volume: int, cancel: asyncio.Event | None = None,
                   *, timeout_s: float = 900.0) -> PlayResult:
        canon = canonical_mime(mime)
        volume = max(0, min(MAX_VOLUME, int(volume)))
        tmp: Path | None = None
        if isinstance(source, bytes):
            fd, name = tempfile.mkstemp(suffix=".audio", dir=self.tmp_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(source)
            tmp = path = Path(name)
        else:
            path = source
        old_level: int | None = None
        try:
            expected = await self.duration(path, canon)
            gain = 1.0
            if self.mixer:
                old_level = await self._mixer_get()
                if old_level is None or not await self._mixer_set(volume):
                    gain = volume / MAX_VOLUME  # the mixer failed: fall back to software gain, still play
            else:
                gain = volume / MAX_VOLUME
            limit = timeout_s
            if expected is not None:
                limit = min(limit, expected * self.hang_factor + self.hang_slack_s)
            return await self._run(self._commands(path, canon, gain), cancel, limit, timeout_s, expected)
        finally:
            if old_level is not None:
                await self._mixer_set(old_level)
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    # -- pipeline ------------------------------------------------------------------------------------
    def _commands(self, path: Path, canon: str, gain: float) -> list[list[str]]:
        aplay = [self.aplay, "-q", "-D", self.device]
        if canon == "audio/wav" and gain == 1.0:
            return [[*aplay, str(path)]]
        decode = [self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-vn",
                  "-af", f"volume={gain:.3f}", "-f", "s16le", "-ac", str(RAW_CHANNELS), "-ar", str(RAW_RATE), "-"]
        return [decode, [*aplay, "-t", "raw", "-f", "S16_LE", "-c", str(RAW_CHANNELS), "-r", str(RAW_RATE)]]

    async def _spawn(self, cmds: list[list[str]]) -> list[asyncio.subprocess.Process]:
        procs: list[asyncio.subprocess.Process] = []
        read_fd = write_fd = -1
        try:
            if len(cmds) == 2:
                read_fd, write_fd = os.pipe()
            for i, cmd in enumerate(cmds):
                last = i == len(cmds) - 1
                stdin = read_fd if (last and len(cmds) == 2) else asyncio.subprocess.DEVNULL
                stdout = asyncio.subprocess.DEVNULL if last else write_fd
                group = 0 if i == 0 else procs[0].pid  # one new process group for the pipeline
                procs.append(await asyncio.create_subprocess_exec(
                    *cmd, stdin=stdin, stdout=stdout, stderr=asyncio.subprocess.PIPE, process_group=group))
        except OSError as exc:
            self._kill(procs, signal.SIGKILL)
            raise PlaybackError("player_missing", str(exc)) from exc
        finally:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
        return procs

    async def _run(self, cmds: list[list[str]], cancel: asyncio.Event | None, limit: float, timeout_s: float,
                   expected: float | None) -> PlayResult:
        t0 = time.monotonic()
        procs = await self._spawn(cmds)
        errs = [bytearray() for _ in procs]
        outcome = "done"
        try:
            async with asyncio.TaskGroup() as tg:
                for p, buf in zip(procs, errs, strict=True):
                    tg.create_task(_drain(p, buf), name="player.stderr")
                done = tg.create_task(_wait_all(procs), name="player.wait")
                watch: set[asyncio.Task[object]] = {done}
                stop = tg.create_task(cancel.wait(), name="player.cancel") if cancel is not None else None
                if stop is not None:
                    watch.add(stop)
                await asyncio.wait(watch, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
                if stop is not None:
                    stop.cancel()
                if not done.done():
                    outcome = "stopped" if (cancel is not None and cancel.is_set()) else (
                        "timeout" if limit >= timeout_s else "hang")
                    await self._terminate(procs, done)
        finally:
            self._kill(procs, signal.SIGKILL)  # nothing may outlive play(), also on cancellation
        elapsed = time.monotonic() - t0
        if outcome == "stopped":
            return PlayResult(elapsed, stopped=True, expected_s=expected)
        if outcome != "done":
            log.warning("audio player %s after %.1f s: killed", outcome, elapsed)
            raise PlaybackError(outcome, sanitize(bytes(errs[-1])))
        for i, p in enumerate(procs):
            if p.returncode != 0:
                raise self._failure(i == len(procs) - 1, p.returncode or 0, bytes(errs[i]))
        return PlayResult(elapsed, expected_s=expected)

    def _failure(self, is_player: bool, rc: int, err: bytes) -> PlaybackError:
        detail = sanitize(err)
        if is_player and b"audio open error" in err:
            reason = "no_device"
        elif rc < 0:
            reason = f"{'player' if is_player else 'decoder'}_killed_{-rc}"
        else:
            reason = f"{'player' if is_player else 'decoder'}_exit_{rc}"
        log.warning("audio %s failed: %s", "player" if is_player else "decoder", reason)
        log.debug("audio child stderr (sanitised): %s", detail)
        return PlaybackError(reason, detail)

    async def _terminate(self, procs: list[asyncio.subprocess.Process], done: asyncio.Task[None]) -> None:
        self._kill(procs, signal.SIGTERM)
        await asyncio.wait({done}, timeout=KILL_GRACE_S)  # never wait_for: it can lose a stop (drivers/aio.py)
        self._kill(procs, signal.SIGKILL)

    @staticmethod
    def _kill(procs: list[asyncio.subprocess.Process], sig: int) -> None:
        if not procs or all(p.returncode is not None for p in procs):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(procs[0].pid, sig)  # the whole group: decoder and player

    # -- helpers -------------------------------------------------------------------------------------
    async def duration(self, path: Path, canon: str) -> float | None:
        """The media's duration: from the WAV header, else from ffprobe; None when unknown."""
        if canon == "audio/wav":
            got = await asyncio.to_thread(wav_file_duration, path)
            if got is not None:
                return got
        out = await _output([self.ffprobe, "-v", "error", "-show_entries", "format=duration",
                             "-of", "default=nw=1:nk=1", str(path)], PROBE_TIMEOUT_S)
        try:
            return float(out.strip()) if out is not None else None
        except ValueError:
            return None

    async def _mixer_get(self) -> int | None:
        out = await _output([self.amixer, "-D", self.mixer_device, "sget", self.mixer or ""], MIXER_TIMEOUT_S)
        m = re.search(r"\[(\d{1,3})%\]", out or "")
        if m is None:
            log.warning("mixer %r on %s unreadable; using software gain", self.mixer, self.mixer_device)
            return None
        return int(m.group(1))

    async def _mixer_set(self, level: int) -> bool:
        out = await _output([self.amixer, "-q", "-D", self.mixer_device, "sset", self.mixer or "", f"{level}%"],
                            MIXER_TIMEOUT_S)
        return out is not None


async def _drain(proc: asyncio.subprocess.Process, buf: bytearray) -> None:
    """Read a child's stderr to the end, keeping only the last STDERR_KEEP bytes."""
    assert proc.stderr is not None
    while chunk := await proc.stderr.read(4096):
        buf += chunk
        del buf[:-STDERR_KEEP]


async def _wait_all(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        await p.wait()


async def _output(cmd: list[str], timeout_s: float) -> str | None:
    """stdout of a short helper command (ffprobe, amixer), or None when it fails or overruns."""
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        out, _ = await wait_within(proc.communicate(), timeout_s)
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode("utf-8", "replace") if proc.returncode == 0 else None
