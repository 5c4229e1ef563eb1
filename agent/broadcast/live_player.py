"""Playing a live session: its own MQTT subscription, the packet gate, the jitter buffer, Opus, the output.

Called by the broadcast service's play task in place of the file player (`BroadcastService._run_play`), so
the relay warm-up, chime, `started` receipt, cancel, preemption, the engine's `max_play_s` and every
`finally` that switches the relay off are the recorded broadcasts' own. The session ends:

- `ended`: the END packet came and the buffer played out;
- `silence`: no valid packet for `silence_s` (the speaker's browser died, the link is gone);
- `max_duration`: the command's `max_s`;
- stopped: a cancel (结束 sends `broadcast.cancel` too: QoS 1, in case the END packet is lost), a preemption.
A session that never delivers a packet within `silence_s` fails (`no_audio`): the relay goes off at once.

Live audio is QoS 0 by design (a late packet is worthless, a retransmitted one worse). It comes on the
box's own broker connection (`ctx.listener`, agent.link.Link.listen), subscribed only while a session is
open: never on a second client, which the county broker (client id = certificate CN) would treat as a
takeover of the box's session. The link's cmd topics still obey QoS 1 only.

"Link too poor" is measured per session: lost + late packets over the packets the stream held
(sequence numbers first..last). Above `POOR_LINK_FRACTION` the `finished` receipt says `link_poor: true`,
and the county sends that box the recording as an ordinary `broadcast.play` (marked `live_fallback`).
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.broadcast.items import Item
from agent.broadcast.live import JitterBuffer, LiveSpec, PacketGate, audio_topic
from agent.config import Config
from agent.opus import Decoder, OpusError
from agent.service import TopicListener
from drivers.aio import wait_within
from drivers.audio.base import PlaybackError, PlayResult

log = logging.getLogger("agent.broadcast.live")

SILENCE_S = 5.0
LEAD_S = 0.04  # frames go to the output this far ahead of their time (the output's own buffer)
POLL_S = 0.02  # a cancel is noticed within this
QUEUE_MAX = 2000  # packets waiting for the event loop; beyond, dropped (counted)
POOR_LINK_FRACTION = 0.2
LINGER_S = 5.0  # after the end, keep listening this long to count packets that still come (then unsubscribe)


QUIET = 600  # peak below this (about -35 dBFS): a frame the jitter buffer may drop to shorten the delay


def quiet(pcm: bytes) -> bool:
    a = array.array("h")
    a.frombytes(pcm[: len(pcm) // 2 * 2])
    if sys.byteorder != "little":
        a.byteswap()
    return not a or max(max(a), -min(a)) < QUIET


# ------------------------------------------------------------------------------------------- outputs
class PcmSink(Protocol):
    async def open(self, rate: int, channels: int, volume: int) -> None: ...
    async def write(self, pcm: bytes) -> None: ...
    async def close(self) -> None: ...


def apply_gain(pcm: bytes, volume: int) -> bytes:
    """Software gain (volume percent) on s16le; 100 = unchanged."""
    if volume >= 100:
        return pcm
    a = array.array("h")
    a.frombytes(pcm)
    if sys.byteorder != "little":
        a.byteswap()
    g = max(0, volume) / 100.0
    a = array.array("h", (int(s * g) for s in a))
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


class AplaySink:
    """Raw PCM into `aplay -D device` (its own process group; killed on close, whatever state it is in)."""

    def __init__(self, device: str = "default", aplay: str = "aplay") -> None:
        self.device, self.aplay = device, aplay
        self._proc: asyncio.subprocess.Process | None = None
        self._volume = 100

    async def open(self, rate: int, channels: int, volume: int) -> None:
        self._volume = volume
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.aplay, "-q", "-D", self.device, "-t", "raw", "-f", "S16_LE", "-r", str(rate), "-c",
                str(channels), "--buffer-time=200000", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise PlaybackError("player_missing", "aplay not found") from None

    async def write(self, pcm: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        if proc.returncode is not None:
            raise PlaybackError(f"player_exit_{proc.returncode}", "aplay ended during a live session")
        proc.stdin.write(apply_gain(pcm, self._volume))
        try:
            await wait_within(proc.stdin.drain(), 1.0)
        except (TimeoutError, ConnectionError):
            raise PlaybackError("hang", "aplay does not take audio") from None

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await wait_within(proc.wait(), 0.5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


class NullSink:
    """For a player that offers no live output: the audio is decoded and dropped (logged once)."""

    async def open(self, rate: int, channels: int, volume: int) -> None:
        log.warning("live broadcast: this box's player has no live output; the audio is not heard")

    async def write(self, pcm: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


def sink_factory_for(player: Any) -> Callable[[], PcmSink]:
    """The live output next to the file player: the player's own `live_sink` factory when it has one (the
    simulator's twin), aplay on the player's ALSA device for the real player, else NullSink."""
    factory = getattr(player, "live_sink", None)
    if callable(factory):
        return factory  # type: ignore[no-any-return]
    device = getattr(player, "device", None)
    if isinstance(device, str) and getattr(player, "aplay", None):
        return lambda: AplaySink(device, player.aplay)
    return NullSink


# --------------------------------------------------------------------------------------- the MQTT side
class LiveLink:
    """One session's audio topic, QoS 0, on the box's own broker connection (`ctx.listener`: the link);
    arrivals go to `on_packet` in the event loop, in batches."""

    def __init__(self, listener: TopicListener | None, topic: str,
                 on_packet: Callable[[bytes, bool, float], None]) -> None:
        self.listener, self.topic, self.on_packet = listener, topic, on_packet
        self.loop = asyncio.get_running_loop()
        self.overflow = 0
        self._listening = False
        self._pending: collections.deque[tuple[bytes, bool, float]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    async def start(self) -> None:
        if self.listener is None:
            raise PlaybackError("no_audio_link", "this agent runs no broker link")
        self.listener.listen(self.topic, self._on_message)
        self._listening = True

    def _on_message(self, payload: bytes, retained: bool, arrived: float) -> None:
        # paho's thread: the arrival time was noted there (the event loop may be busy); hand over in batches
        with self._lock:
            if len(self._pending) >= QUEUE_MAX:
                self.overflow += 1
                return
            self._pending.append((payload, retained, arrived))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            batch, self._pending = list(self._pending), collections.deque()
            self._scheduled = False
        for payload, retained, t in batch:
            self.on_packet(payload, retained, t)

    async def close(self) -> None:
        if self._listening and self.listener is not None:
            self._listening = False
            self.listener.unlisten(self.topic)


# ------------------------------------------------------------------------------------------ the player
@dataclass
class _Listening:
    """One session's receiving side, from `open` (before warm-up) to the end of `play`."""

    spec: LiveSpec
    gate: PacketGate
    jb: JitterBuffer
    decoder: Decoder
    arrived: asyncio.Event
    seqs: list[int]  # first and last accepted audio packet
    state: dict[str, Any]  # "last": arrival of the newest valid packet (None: none yet), "open"
    link: LiveLink | None = None
    connecting: asyncio.Task[None] | None = None


class LivePlayer:
    def __init__(self, config: Config, sink_factory: Callable[[], PcmSink], *, silence_s: float = SILENCE_S,
                 jitter_min_s: float = 0.2, jitter_max_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 listener: TopicListener | None = None) -> None:
        self.config = config
        self.listener = listener  # the box's broker link (ctx.listener); None: a session fails with no_audio_link
        self.sink_factory = sink_factory
        self.silence_s = silence_s
        self.jitter_min_s, self.jitter_max_s = jitter_min_s, jitter_max_s
        self.clock = clock
        self.stats: dict[str, dict[str, Any]] = {}  # item id -> the receipt's counts, taken by the service
        self.counters: collections.Counter[str] = collections.Counter()  # every session, for status / tests
        self._lingering: set[asyncio.Task[None]] = set()
        self._open: dict[str, _Listening] = {}  # sessions listened to, not yet playing (warm-up, chime)

    def open(self, item: Item) -> None:
        """Start listening to the session now (the play task calls this before the relay's warm-up and the
        chime): packets that arrive meanwhile are kept, so the first words are not lost. `play` takes it."""
        self.discard(item.id)
        self._open[item.id] = self._listen(item)

    def discard(self, item_id: str) -> None:
        """A session opened and not played (cancelled during warm-up): close its subscription."""
        live = self._open.pop(item_id, None)
        if live is not None:
            live.state["open"] = False
            live.decoder.close()
            self._linger(live)

    def _listen(self, item: Item) -> _Listening:
        spec = LiveSpec.from_item_extra(item.extra, item.cls, item.level, item.title, item.volume)
        live = _Listening(spec, PacketGate(spec.session, spec.key),
                          JitterBuffer(spec.rate, min_s=self.jitter_min_s, max_s=self.jitter_max_s,
                                       start_s=(self.jitter_min_s + self.jitter_max_s) / 2),
                          Decoder(spec.rate, spec.channels), asyncio.Event(), [], {"last": None, "open": True})
        live.link = LiveLink(self.listener, audio_topic(self.config.mqtt.topic_prefix, spec.session),
                             lambda raw, retained, t: self._on_packet(live, raw, retained, t))
        live.connecting = asyncio.get_running_loop().create_task(live.link.start(), name="broadcast.live.connect")
        return live

    def _on_packet(self, live: _Listening, raw: bytes, retained: bool, t: float) -> None:
        if not live.state["open"]:
            self.counters["dropped.after_end"] += 1
            return
        pkt = live.gate.admit(raw, retained)
        if pkt is None:
            return
        if not pkt.end:
            if not live.seqs:
                live.seqs.append(pkt.seq)
            live.seqs[1:] = [max(pkt.seq, live.seqs[-1])]
        live.state["last"] = t

        def samples_of(frame: bytes) -> int:
            try:
                return live.decoder.samples_in(frame)
            except OpusError:
                return 0

        live.jb.put(pkt, t, samples_of)
        live.arrived.set()

    async def play(self, item: Item, volume: int, cancel: asyncio.Event) -> PlayResult:
        live = self._open.pop(item.id, None) or self._listen(item)
        spec, gate, jb, decoder, state = live.spec, live.gate, live.jb, live.decoder, live.state
        sink = self.sink_factory()
        t0 = self.clock()
        played = 0
        why = "ended"
        try:
            assert live.connecting is not None
            await live.connecting
            await sink.open(spec.rate, spec.channels, volume)
            now = self.clock()
            jb.rebase(now)  # what came during warm-up and chime plays from now on (the delay shrinks in pauses)
            if state["last"] is None:
                state["last"] = now
            while True:
                now = self.clock()
                if cancel.is_set():
                    return PlayResult(now - t0, stopped=True)
                if now - t0 >= spec.max_s:
                    why = "max_duration"
                    break
                if jb.ended and not jb.frames:
                    break
                if now - state["last"] >= self.silence_s:
                    if jb.next_pos is None:
                        raise PlaybackError("no_audio", f"no audio packet in {self.silence_s:.0f} s")
                    why = "silence"
                    break
                if jb.next_pos is not None and now >= jb.next_t - LEAD_S:
                    kind, value = jb.take()
                    if kind == "frame":
                        assert isinstance(value, bytes)
                        try:
                            pcm = decoder.decode(value)
                        except OpusError:
                            jb.counters["frames_bad"] += 1
                            pcm = decoder.conceal(jb.frame_samples)
                        n = len(pcm) // (2 * spec.channels)
                        if jb.over_target() and quiet(pcm):
                            jb.skip(n)  # the delay shrinks by a frame nobody hears
                            continue
                        jb.advance(n)
                    else:
                        assert isinstance(value, int)
                        pcm = decoder.conceal(value)
                    played += len(pcm) // (2 * spec.channels)
                    await sink.write(pcm)
                    continue
                wake = POLL_S if jb.next_pos is None else max(0.0, min(POLL_S, jb.next_t - LEAD_S - now))
                live.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_within(live.arrived.wait(), wake)
        finally:
            state["open"] = False
            await sink.close()
            decoder.close()
            assert live.link is not None
            self._count(item.id, spec, gate, jb, live.seqs, live.link.overflow, played, why)
            self._linger(live)
        return PlayResult(self.clock() - t0, expected_s=None)

    def _count(self, item_id: str, spec: LiveSpec, gate: PacketGate, jb: JitterBuffer, seqs: list[int],
               overflow: int, played: int, why: str) -> None:
        received = jb.counters["packets"]  # audio packets accepted (not the END packet)
        expected = seqs[-1] - seqs[0] + 1 if seqs else 0
        lost = max(0, expected - received)
        late = jb.counters["packets_late"]
        dropped = {k.split(".", 1)[1]: v for k, v in gate.counters.items() if k.startswith("dropped.")}
        self.counters.update(gate.counters)
        self.counters.update({f"jitter.{k}": v for k, v in jb.counters.items()})
        poor = expected > 0 and (lost + late) / expected > POOR_LINK_FRACTION
        self.stats[item_id] = {
            "live": True, "session": spec.session, "end": why, "packets": {
                "received": received, "lost": lost, "late": late, "dropped": dropped, "overflow": overflow},
            "concealed": jb.counters["concealed"], "underrun": jb.counters["underrun"],
            "skipped": jb.counters["skipped"], "stretched": jb.counters["stretched"],
            "played_s": round(played / spec.rate, 3), "jitter_ms": round(jb.wanted_target() * 1000),
            "link_poor": poor}
        log.info("live %s ended (%s): %d packets, %d lost, %d late, %d refused", spec.session, why, received,
                 lost, late, sum(dropped.values()))

    def _linger(self, live: _Listening) -> None:
        """Keep the subscription a little longer so packets sent after the end are counted, not played."""
        async def later() -> None:
            try:
                if live.connecting is not None and not live.connecting.done():
                    live.connecting.cancel()
                await asyncio.wait({live.connecting} if live.connecting else set())
                await asyncio.sleep(LINGER_S)
            finally:
                if live.link is not None:
                    await live.link.close()

        task = asyncio.get_running_loop().create_task(later(), name="broadcast.live.linger")
        self._lingering.add(task)
        task.add_done_callback(self._lingering.discard)

    async def close(self) -> None:
        for item_id in list(self._open):
            self.discard(item_id)
        for task in list(self._lingering):
            task.cancel()
        if self._lingering:
            await asyncio.wait(set(self._lingering))


def write_wav(path: Path, pcm: bytes, rate: int, channels: int = 1) -> None:
    """A PCM WAV of s16le `pcm` (the twin's recording, the server's fallback)."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
