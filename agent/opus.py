"""Opus through libopus with ctypes: the decoder the box plays live broadcasts with, and an encoder for the
county server's fallback, the simulator's sender and the tests.

Why ctypes and not a child process (ffmpeg/opusdec): live audio arrives as separate Opus packets, and the
box needs packet-loss concealment (libopus PLC: `opus_decode(NULL)`) exactly where a packet is missing, on
its own jitter-buffer clock. A decoder child reads a container stream and cannot be told "this packet is
lost, conceal 60 ms now" without a container per packet. libopus0 is already on every Debian/Raspberry Pi OS
box (ffmpeg depends on it), the binding is five functions, and a decode of one 60 ms frame takes well under a
millisecond on a Pi, so it runs inline on the event loop. No PyPI binding for libopus is kept up
(opuslib: last release 2018), so the few calls are written here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

OPUS_APPLICATION_VOIP = 2048
OPUS_APPLICATION_AUDIO = 2049
OPUS_SET_BITRATE_REQUEST = 4002
RATES = (8000, 12000, 16000, 24000, 48000)
MAX_FRAME_MS = 120  # the longest Opus packet
MAX_PACKET_BYTES = 1500


class OpusError(Exception):
    """libopus is missing or refused something; `str()` says what."""


_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """Load libopus once (OpusError when it is not installed: `apt-get install libopus0`)."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        name = ctypes.util.find_library("opus") or "libopus.so.0"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise OpusError(f"libopus not found ({exc}); install libopus0") from None
        c_int, c_i32, c_p = ctypes.c_int, ctypes.c_int32, ctypes.c_void_p
        lib.opus_decoder_create.restype = c_p
        lib.opus_decoder_create.argtypes = [c_i32, c_int, ctypes.POINTER(c_int)]
        lib.opus_decoder_destroy.argtypes = [c_p]
        lib.opus_decode.restype = c_int
        lib.opus_decode.argtypes = [c_p, ctypes.c_char_p, c_i32, ctypes.POINTER(ctypes.c_int16), c_int, c_int]
        lib.opus_encoder_create.restype = c_p
        lib.opus_encoder_create.argtypes = [c_i32, c_int, c_int, ctypes.POINTER(c_int)]
        lib.opus_encoder_destroy.argtypes = [c_p]
        lib.opus_encode.restype = c_i32
        lib.opus_encode.argtypes = [c_p, ctypes.POINTER(ctypes.c_int16), c_int, ctypes.c_char_p, c_i32]
        lib.opus_encoder_ctl.restype = c_int
        lib.opus_encoder_ctl.argtypes = [c_p, c_int, c_i32]
        lib.opus_packet_get_nb_samples.restype = c_int
        lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, c_i32, c_i32]
        lib.opus_strerror.restype = ctypes.c_char_p
        lib.opus_strerror.argtypes = [c_int]
        _lib = lib
        return lib


def available() -> bool:
    try:
        library()
    except OpusError:
        return False
    return True


def _error(lib: ctypes.CDLL, code: int) -> str:
    text = lib.opus_strerror(code)
    return text.decode("ascii", "replace") if text else f"error {code}"


def _check(rate: int, channels: int) -> None:
    if rate not in RATES:
        raise OpusError(f"rate must be one of {RATES}, not {rate}")
    if channels not in (1, 2):
        raise OpusError(f"channels must be 1 or 2, not {channels}")


class Decoder:
    """PCM s16le out of Opus packets; `conceal(samples)` for a missing packet (libopus PLC)."""

    def __init__(self, rate: int = 48000, channels: int = 1) -> None:
        _check(rate, channels)
        self._lib = library()
        self.rate, self.channels = rate, channels
        err = ctypes.c_int(0)
        self._st = self._lib.opus_decoder_create(rate, channels, ctypes.byref(err))
        if not self._st or err.value != 0:
            raise OpusError(f"opus_decoder_create: {_error(self._lib, err.value)}")
        self._max = rate * MAX_FRAME_MS // 1000
        self._buf = (ctypes.c_int16 * (self._max * channels))()

    def samples_in(self, packet: bytes) -> int:
        """Samples per channel the packet decodes to (OpusError for a malformed one)."""
        n = self._lib.opus_packet_get_nb_samples(packet, len(packet), self.rate)
        if n < 0:
            raise OpusError(f"not an Opus packet: {_error(self._lib, n)}")
        return int(n)

    def decode(self, packet: bytes) -> bytes:
        if not packet or len(packet) > MAX_PACKET_BYTES * 4:
            raise OpusError("empty or oversize Opus packet")
        n = self._lib.opus_decode(self._st, packet, len(packet), self._buf, self._max, 0)
        if n < 0:
            raise OpusError(f"opus_decode: {_error(self._lib, n)}")
        return ctypes.string_at(self._buf, n * 2 * self.channels)

    def conceal(self, samples: int) -> bytes:
        """`samples` per channel of loss concealment (a multiple of 2.5 ms; longer is done in pieces)."""
        out = bytearray()
        step = self.rate // 400  # 2.5 ms
        samples = max(step, samples - samples % step)
        while samples > 0:
            n_ask = min(samples, self._max)
            n = self._lib.opus_decode(self._st, None, 0, self._buf, n_ask, 0)
            if n < 0:
                raise OpusError(f"opus_decode (PLC): {_error(self._lib, n)}")
            out += ctypes.string_at(self._buf, n * 2 * self.channels)
            samples -= n_ask
        return bytes(out)

    def close(self) -> None:
        if self._st:
            self._lib.opus_decoder_destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        self.close()


class Encoder:
    """Opus packets from PCM s16le frames of 2.5/5/10/20/40/60 ms."""

    def __init__(self, rate: int = 48000, channels: int = 1, *, bitrate: int = 24000,
                 application: int = OPUS_APPLICATION_VOIP) -> None:
        _check(rate, channels)
        self._lib = library()
        self.rate, self.channels = rate, channels
        err = ctypes.c_int(0)
        self._st = self._lib.opus_encoder_create(rate, channels, application, ctypes.byref(err))
        if not self._st or err.value != 0:
            raise OpusError(f"opus_encoder_create: {_error(self._lib, err.value)}")
        rc = self._lib.opus_encoder_ctl(self._st, OPUS_SET_BITRATE_REQUEST, bitrate)
        if rc != 0:
            raise OpusError(f"bitrate {bitrate}: {_error(self._lib, rc)}")
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)

    def encode(self, pcm: bytes) -> bytes:
        frame = len(pcm) // (2 * self.channels)
        if frame * 2 * self.channels != len(pcm):
            raise OpusError("PCM length is not whole samples")
        buf = (ctypes.c_int16 * (frame * self.channels)).from_buffer_copy(pcm)
        n = self._lib.opus_encode(self._st, buf, frame, self._out, MAX_PACKET_BYTES)
        if n < 0:
            raise OpusError(f"opus_encode ({frame} samples): {_error(self._lib, n)}")
        return self._out.raw[:n]

    def close(self) -> None:
        if self._st:
            self._lib.opus_encoder_destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        self.close()
