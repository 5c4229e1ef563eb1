"""Twins for the wristband gateways: a gateway on a real pty or TCP socket, and a BLE scanner.

`GatewayTwin` is the other end of the agent's serial/socket link. It speaks one codec (watch, ingics, nmea)
for a set of `SimWearer`s that walk along waypoints with seeded GPS jitter; tests and scenarios press SOS,
remove bands, make wearers fall, drain batteries, silence bands, inject noise, split frames, and unplug and
replug the gateway. It records every byte the agent writes back (LK/AL acks) in `replies`, and every text
line the agent writes outside ack frames (the profile's `[gateway_firmware]` setup commands) in `commands`.
By default it answers nothing; with `answers` (command -> reply line, None = stay silent) and/or
`answer_default` it answers each setup line as an AT gateway does (`\r\nOK\r\n`). Everything random comes
from one `random.Random(seed)`, so a seed replays a run exactly.

The pty link exposes a stable path (a symlink, as udev's /dev/serial/by-id links are) that survives a replug;
the TCP link listens on 127.0.0.1 and `url` is `socket://127.0.0.1:PORT`.

`SimAdvertSource` stands in for bleak behind drivers.wristband.ble.AdvertSource.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import tempfile
import tty
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from agent.clock import Clock, SystemClock
from drivers.wristband import ingics, nmea, watch
from drivers.wristband.ble import AdvertCallback, LostCallback
from drivers.wristband.bleadv import Advertisement, encode_adv
from drivers.wristband.events import BandAlarm
from drivers.wristband.tags import EVENT_BUTTON, EVENT_FALL, encode_tag
from drivers.wristband.transport import GatewayGone

EARTH_M_PER_DEG = 111_320.0
PRESS_FRAMES = 3  # a pressed/fallen BLE tag shows its event bit in this many adverts, then clears it


@dataclass
class SimWearer:
    """One band: walks `path` (lat, lon waypoints) at `speed_m_s`, looping back to the start."""

    device: str  # band id (watch) or BLE MAC (ingics)
    path: list[tuple[float, float]]
    speed_m_s: float = 1.0
    battery_pct: int = 100
    jitter_m: float = 5.0  # 1-sigma GPS noise per axis
    tag_layout: str = "village-band"  # BLE tags: a layout name from drivers.wristband.tags
    maker: str = "3G"
    worn: bool = True
    silent: bool = False
    gps_valid: bool = True
    press_count: int = 0
    _travelled_m: float = 0.0
    _pending: set[BandAlarm] = field(default_factory=set)
    _event_frames: int = 0
    _event: int = 0

    def advance(self, seconds: float) -> None:
        self._travelled_m += self.speed_m_s * seconds

    def true_position(self) -> tuple[float, float]:
        """Where the wearer is, without noise (for test oracles)."""
        if len(self.path) == 1:
            return self.path[0]
        legs = list(zip(self.path, self.path[1:], strict=False))
        lengths = [_distance_m(a, b) for a, b in legs]
        total = sum(lengths) or 1.0
        left = self._travelled_m % total
        for (a, b), length in zip(legs, lengths, strict=True):
            if left <= length and length > 0:
                t = left / length
                return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t
            left -= length
        return self.path[-1]

    def observed_position(self, rng: random.Random) -> tuple[float, float]:
        lat, lon = self.true_position()
        dn, de = rng.gauss(0, self.jitter_m), rng.gauss(0, self.jitter_m)
        return lat + dn / EARTH_M_PER_DEG, lon + de / (EARTH_M_PER_DEG * math.cos(math.radians(lat)))


class GatewayTwin:
    """A wristband gateway on a pty or TCP socket. `async with GatewayTwin(...) as gw:` then `gw.url`."""

    def __init__(
        self,
        codec: Literal["watch", "ingics", "nmea"],
        wearers: list[SimWearer] | None = None,
        *,
        link: Literal["pty", "tcp"] = "pty",
        seed: int = 1,
        clock: Clock | None = None,
        gateway_id: str = "C0:FF:EE:00:00:01",
        gateway_pos: tuple[float, float] = (22.5, 113.9),
        directory: Path | None = None,
        answers: dict[str, str | None] | None = None,
        answer_default: str | None = None,
    ) -> None:
        self.codec = codec
        self.wearers = {w.device: w for w in wearers or []}
        self.link = link
        self.rng = random.Random(seed)
        self.clock = clock or SystemClock()
        self.gateway_id = gateway_id
        self.gateway_pos = gateway_pos
        self.replies: list[bytes] = []  # every chunk the agent wrote back, in order
        self.sent: list[bytes] = []  # every chunk written to the agent, in order
        self.commands: list[str] = []  # text lines the agent wrote outside ack frames (setup commands), in order
        self.answers = dict(answers or {})
        self.answer_default = answer_default
        self.command_seen = asyncio.Condition()
        self._inbuf = bytearray()
        self._answering: set[asyncio.Task[None]] = set()
        self.plugged = False
        self._dir = directory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._peer: asyncio.Transport | None = None
        self._peer_ready = asyncio.Event()
        self._port = 0

    # ---- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> GatewayTwin:
        if self._dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gwtwin-")
            self._dir = Path(self._tmp.name)
        await self.replug()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unplug()
        if self._tmp is not None:
            self._tmp.cleanup()

    @property
    def url(self) -> str:
        if self.link == "tcp":
            return f"socket://127.0.0.1:{self._port}"
        assert self._dir is not None
        return str(self._dir / "ttyGW0")

    async def replug(self) -> None:
        """Plug the gateway (back) in: a fresh pty behind the same path, or the TCP port listening again."""
        if self.plugged:
            return
        self._inbuf = bytearray()  # a line cut by the unplug is not a command
        if self.link == "pty":
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line editing before the agent opens it
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self._point_link(os.ttyname(slave))
            asyncio.get_running_loop().add_reader(master, self._pty_readable)
        else:
            self._peer_ready = asyncio.Event()
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _TwinProtocol(self), "127.0.0.1", self._port or 0
            )
            self._port = self._server.sockets[0].getsockname()[1]
        self.plugged = True

    async def unplug(self) -> None:
        """Pull the plug: the agent's next read fails. The pty path disappears; the TCP port stops listening."""
        if not self.plugged:
            return
        self.plugged = False
        if self.link == "pty":
            asyncio.get_running_loop().remove_reader(self._master)  # type: ignore[arg-type]
            self._point_link(None)
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
        else:
            if self._peer is not None:
                self._peer.abort()
                self._peer = None
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None

    def _point_link(self, target: str | None) -> None:
        """Make the stable path point at this pty (atomically), or remove it, as udev does on plug/unplug."""
        path = Path(self.url)
        if target is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(path)

    async def connected(self, timeout_s: float = 10.0) -> None:
        """TCP: wait until the agent has connected (a pty needs no wait: bytes queue in the pty)."""
        if self.link == "tcp":
            await asyncio.wait_for(self._peer_ready.wait(), timeout_s)

    # ---- what wearers do ---------------------------------------------------------------------------

    def press_sos(self, device: str) -> None:
        w = self.wearers[device]
        w.press_count = (w.press_count + 1) & 0xFFFF
        w._pending.add(BandAlarm.SOS)
        w._event, w._event_frames = w._event | EVENT_BUTTON, PRESS_FRAMES

    def fall(self, device: str) -> None:
        w = self.wearers[device]
        w._pending.add(BandAlarm.FALL)
        w._event, w._event_frames = w._event | EVENT_FALL, PRESS_FRAMES

    def remove_band(self, device: str) -> None:
        w = self.wearers[device]
        w.worn = False
        w._pending.add(BandAlarm.BAND_REMOVED)

    def drain(self, device: str, pct: int) -> None:
        w = self.wearers[device]
        w.battery_pct = max(0, w.battery_pct - pct)

    def silence(self, device: str, silent: bool = True) -> None:
        self.wearers[device].silent = silent

    def advance(self, seconds: float) -> None:
        for w in self.wearers.values():
            w.advance(seconds)

    # ---- frames ------------------------------------------------------------------------------------

    def frame_for(self, w: SimWearer) -> bytes:
        """The next frame this wearer's band sends (consumes a pending alarm)."""
        now = self.clock.time()
        if self.codec == "watch":
            lat, lon = w.observed_position(self.rng)
            alarms, w._pending = w._pending, set()
            return watch.encode_position(
                w.device,
                kind="AL" if alarms else "UD",
                maker=w.maker,
                ts=now,
                lat=lat,
                lon=lon,
                valid=w.gps_valid,
                battery_pct=w.battery_pct,
                sats=8 if w.gps_valid else 0,
                status=watch.status_bits(*alarms),
            )
        if self.codec == "ingics":
            return ingics.encode_gprp(w.device, self.gateway_id, -60 - self.rng.randint(0, 25), self.advert_for(w))
        raise ValueError("an NMEA gateway reports its own position only: use gateway_fix()")

    def advert_for(self, w: SimWearer) -> bytes:
        return encode_adv(self.advertisement_for(w))

    def advertisement_for(self, w: SimWearer) -> Advertisement:
        w._pending.clear()
        event = w._event if w._event_frames > 0 else 0
        if w._event_frames > 0:
            w._event_frames -= 1
            if w._event_frames == 0:
                w._event = 0
        company, body = encode_tag(w.tag_layout, battery_pct=w.battery_pct, event=event, press_count=w.press_count)
        return Advertisement(flags=0x06, manufacturer_data={company: body})

    def gateway_fix(self) -> bytes:
        """The gateway's own position: NMEA RMC+GGA, or an Ingics $GPSR line."""
        lat, lon = self.gateway_pos
        if self.codec == "ingics":
            return ingics.encode_gpsr(self.gateway_id, lat, lon, hdop=1.0, ts=int(self.clock.time()))
        when = datetime.fromtimestamp(self.clock.time(), UTC)
        return nmea.encode_rmc(lat, lon, when=when) + nmea.encode_gga(lat, lon, when=when, hdop=1.2)

    def heartbeat(self, device: str | None = None) -> bytes:
        if self.codec == "watch":
            w = self.wearers[device] if device else next(iter(self.wearers.values()))
            return watch.encode_lk(w.device, maker=w.maker, battery_pct=w.battery_pct)
        if self.codec == "ingics":
            return ingics.encode_hbrp(self.gateway_id, ts=int(self.clock.time()))
        return self.gateway_fix()

    # ---- the wire ----------------------------------------------------------------------------------

    async def report_all(self, *, split: bool = False) -> int:
        """One frame from every band that is not silent; returns how many were sent."""
        frames = [self.frame_for(w) for w in self.wearers.values() if not w.silent]
        for f in frames:
            await self.send(f, split=split)
        return len(frames)

    async def send(self, data: bytes, *, split: bool = False) -> None:
        """Write bytes to the agent; `split` writes them in random small pieces (as a slow UART delivers)."""
        if not split:
            await self._write(data)
            return
        i = 0
        while i < len(data):
            n = self.rng.randint(1, 7)
            await self._write(data[i : i + n])
            i += n

    async def noise(self, size: int = 64) -> bytes:
        """Random bytes on the line (no frame starts in them); returns what was sent."""
        junk = bytes(b for b in self.rng.randbytes(size * 2) if b not in b"[]$")[:size]
        await self._write(junk)
        return junk

    async def wait_commands(self, n: int, timeout_s: float = 10.0) -> list[str]:
        """Wait until the agent has written `n` setup lines in all (an observation, not a timing)."""
        async def seen() -> None:
            async with self.command_seen:
                await self.command_seen.wait_for(lambda: len(self.commands) >= n)

        await asyncio.wait_for(seen(), timeout_s)
        return list(self.commands)

    def _received(self, data: bytes) -> None:
        """What the agent wrote: kept whole in `replies`; text lines outside `[..]` acks are commands."""
        self.replies.append(data)
        self._inbuf += data
        buf = re.sub(rb"\[[^\[\]]*\]", b"", bytes(self._inbuf))
        cut = buf.find(b"[")  # an ack still arriving: lines before it are complete, it is kept
        head, tail = (buf, b"") if cut < 0 else (buf[:cut], buf[cut:])
        *lines, rest = re.split(rb"\r\n|\r|\n", head)
        self._inbuf = bytearray(rest + tail)
        for raw in lines:
            if not raw:
                continue
            line = raw.decode("ascii", "backslashreplace")
            self.commands.append(line)
            task = asyncio.get_running_loop().create_task(self._answer(line))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, line: str) -> None:
        async with self.command_seen:
            self.command_seen.notify_all()
        reply = self.answers.get(line, self.answer_default)
        if reply is None or not self.plugged:
            return
        try:
            await self._write(b"\r\n" + reply.encode("ascii") + b"\r\n")
        except GatewayGone:
            pass

    def reply_frames(self) -> list[bytes]:
        """The agent's replies split into watch frames."""
        return re.findall(rb"\[[^\[\]]*\]", b"".join(self.replies))

    async def _write(self, data: bytes) -> None:
        if not self.plugged:
            raise GatewayGone("the twin is unplugged")
        self.sent.append(data)
        if self.link == "tcp":
            await self.connected()
            assert self._peer is not None
            self._peer.write(data)
            return
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view:
            try:
                n = os.write(self._master, view)  # type: ignore[arg-type]
                view = view[n:]
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(self._master, ready.set_result, None)  # type: ignore[arg-type]
                try:
                    await ready
                finally:
                    loop.remove_writer(self._master)  # type: ignore[arg-type]

    def _pty_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)  # type: ignore[arg-type]
        except (BlockingIOError, OSError):
            return  # EIO while no one holds the far end; the twin keeps its own end open, so rare
        if data:
            self._received(data)


class _TwinProtocol(asyncio.Protocol):
    """The TCP side: one agent connection at a time; a second one replaces the first."""

    def __init__(self, twin: GatewayTwin) -> None:
        self.twin = twin
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.twin._peer is not None:
            self.twin._peer.abort()
        self.transport = transport
        self.twin._peer = transport
        self.twin._peer_ready.set()

    def data_received(self, data: bytes) -> None:
        self.twin._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.twin._peer is self.transport:
            self.twin._peer = None
            self.twin._peer_ready.clear()


class SimAdvertSource:
    """A BLE radio twin behind drivers.wristband.ble.AdvertSource: tests push adverts, or lose the adapter."""

    def __init__(self, *, fail_start: str | None = None) -> None:
        self.fail_start = fail_start  # a reason: start() raises GatewayGone (adapter missing) while set
        self.scanning = False
        self.starts = 0
        self.history: list[tuple[str, int, Advertisement]] = []
        self._on_advert: AdvertCallback | None = None
        self._on_lost: LostCallback | None = None

    async def start(self, on_advert: AdvertCallback, on_lost: LostCallback) -> None:
        if self.fail_start is not None:
            raise GatewayGone(f"BLE adapter: {self.fail_start}")
        self._on_advert, self._on_lost = on_advert, on_lost
        self.scanning = True
        self.starts += 1

    async def stop(self) -> None:
        self.scanning = False
        self._on_advert = self._on_lost = None

    def advertise(self, mac: str, rssi: int, adv: Advertisement) -> None:
        """A tag's advertisement reaches the radio (dropped, as on air, while not scanning)."""
        self.history.append((mac, rssi, adv))
        if self.scanning and self._on_advert is not None:
            self._on_advert(mac, rssi, adv)

    def lose(self, reason: str = "adapter removed") -> None:
        """The adapter vanishes (USB dongle pulled, bluetoothd restarted)."""
        if self._on_lost is not None:
            self._on_lost(reason)
        self.scanning = False


def _distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    dn = (b[0] - a[0]) * EARTH_M_PER_DEG
    de = (b[1] - a[1]) * EARTH_M_PER_DEG * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.hypot(dn, de)
