"""Text to speech with espeak-ng: offline, small, packaged in Debian, and it has a Mandarin voice (`cmn`).

Better-sounding offline engines (piper, sherpa-onnx) need model files of tens of MB per voice and are
not in Debian; espeak-ng is intelligible for short notices and costs nothing to ship. The `Tts` Protocol
keeps the door open for a better engine later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from drivers.aio import wait_within
from drivers.audio.base import TtsError
from drivers.audio.player import sanitize

TTS_TIMEOUT_S = 30.0


class EspeakTts:
    def __init__(self, voice: str = "cmn", *, words_per_min: int = 150, binary: str = "espeak-ng") -> None:
        self.voice = voice
        self.words_per_min = words_per_min
        self.binary = binary
        self._voice_ok = False

    async def _check_voice(self) -> None:
        """espeak-ng reading stdin falls back to its default voice silently: check the name once."""
        if self._voice_ok:
            return
        try:
            proc = await asyncio.create_subprocess_exec(self.binary, "--voices", stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            raise TtsError(f"cannot run {self.binary}: {exc.strerror}") from exc
        try:
            out, _ = await wait_within(proc.communicate(), TTS_TIMEOUT_S)
        except TimeoutError:
            raise TtsError(f"{self.binary} --voices did not answer") from None
        finally:  # also on a stop (cancellation): no child outlives the call
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        names: set[str] = set()
        for line in out.decode("utf-8", "replace").splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 5:
                names.update((cols[1].lower(), cols[3].lower(), cols[4].lower(), cols[4].rsplit("/", 1)[-1].lower()))
        if self.voice.lower() not in names:
            raise TtsError(f"{self.binary} has no voice {self.voice!r}")
        self._voice_ok = True

    async def synth(self, text: str, out: Path) -> Path:
        if not text.strip():
            raise TtsError("no text to speak")
        await self._check_voice()
        tmp = out.with_name(out.name + ".part")
        cmd = [self.binary, "-v", self.voice, "-s", str(self.words_per_min), "-w", str(tmp), "--stdin"]
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise TtsError(f"cannot run {self.binary}: {exc.strerror}") from exc
        try:
            # text goes in on stdin, never on the command line (no argv limits, no option injection)
            _, err = await wait_within(proc.communicate(text.encode("utf-8")), TTS_TIMEOUT_S)
        except BaseException as exc:  # a timeout, or a stop: no half-written file is left behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, TimeoutError):
                raise TtsError(f"{self.binary} took longer than {TTS_TIMEOUT_S:.0f} s") from None
            raise
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size <= 44:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TtsError(f"{self.binary} failed (exit {proc.returncode}): {sanitize(err or b'')}")
        os.replace(tmp, out)
        return out
