"""Transports over real links: a pty and a TCP socket:// URL to the gateway twin; BLE through its twin."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Literal

import pytest

from drivers.wristband.ble import BleGatewayTransport, advert_line
from drivers.wristband.codec import make_decoder
from drivers.wristband.events import BandAlarm, BandReport, GatewayFix, WristbandEvent
from drivers.wristband.ingics import IngicsDecoder
from drivers.wristband.reader import Backoff, GatewayReader
from drivers.wristband.transport import GatewayConfigError, GatewayGone, SerialGatewayTransport, open_gateway
from drivers.wristband.watch import WatchDecoder, encode_alarm, encode_lk, status_bits
from sim.wristband import GatewayTwin, SimAdvertSource, SimWearer

FAST = Backoff(initial_s=0.01, max_s=0.05)  # reopen quickly; no test asserts on how long anything took
PATH = [(22.5, 113.9), (22.501, 113.901)]


class Edges:
    def __init__(self) -> None:
        self.calls: list[tuple[bool, str]] = []

    def __call__(self, up: bool, reason: str) -> None:
        self.calls.append((up, reason))


class Consumer:
    """Drains a reader's events into a queue from one task, so a test can send, then wait for what arrives."""

    def __init__(self, reader: GatewayReader) -> None:
        self.reader = reader
        self.queue: asyncio.Queue[WristbandEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Consumer:
        self._task = asyncio.create_task(self._run(), name="test.consumer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with contextlib.aclosing(self.reader.events()) as events:
            async for ev in events:
                self.queue.put_nowait(ev)

    async def take(self, n: int, timeout_s: float = 20.0) -> list[WristbandEvent]:
        return [await asyncio.wait_for(self.queue.get(), timeout_s) for _ in range(n)]


async def until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait for a condition on real I/O; the timeout only turns a hang into a failure."""
    async with asyncio.timeout(timeout_s):
        while not cond():  # polling state that real I/O changes; there is no event to wait on
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("link", ["pty", "tcp"])
async def test_watch_over_link_with_acks_unplug_and_replug(link: Literal["pty", "tcp"]) -> None:
    wearers = [SimWearer("8800000015", PATH), SimWearer("8800000016", PATH)]
    async with GatewayTwin("watch", wearers, link=link, seed=7) as twin:
        edges = Edges()
        reader = GatewayReader(open_gateway(twin.url), WatchDecoder(), on_state=edges, backoff=FAST, name="gw1")
        async with Consumer(reader) as c:
            await until(lambda: reader.stats.opens == 1)  # opening a tty flushes what was sent before
            await twin.connected()
            await twin.report_all(split=True)
            got = await c.take(2)
            assert [e.device for e in got if isinstance(e, BandReport)] == ["8800000015", "8800000016"]

            twin.press_sos("8800000015")
            await twin.send(twin.frame_for(twin.wearers["8800000015"]))
            await twin.send(twin.heartbeat("8800000016"))
            sos, lk = await c.take(2)
            assert isinstance(sos, BandReport) and sos.alarms == {BandAlarm.SOS} and sos.kind == "AL"
            assert isinstance(lk, BandReport) and lk.kind == "LK"
            await until(lambda: len(twin.reply_frames()) >= 2)  # the acks travel back over the same link
            assert twin.reply_frames() == [b"[3G*8800000015*0002*AL]", b"[3G*8800000016*0002*LK]"]
            assert edges.calls == []  # a healthy start reports nothing

            await twin.unplug()
            await until(lambda: reader.stats.open_failures >= 3)  # reopening keeps failing: still one down edge
            await twin.replug()
            await until(lambda: reader.stats.opens == 2)
            await twin.connected()
            await twin.send(twin.frame_for(twin.wearers["8800000016"]))
            (after,) = await c.take(1)
            assert isinstance(after, BandReport) and after.device == "8800000016"
        assert [up for up, _ in edges.calls] == [False, True]
        assert reader.stats.outages == 1


async def test_garbage_on_the_line_is_skipped_and_counted() -> None:
    async with GatewayTwin("watch", [SimWearer("4700186508", PATH)], seed=3) as twin:
        codec = WatchDecoder()
        reader = GatewayReader(open_gateway(twin.url), codec, backoff=FAST)
        async with Consumer(reader) as c:
            await until(lambda: reader.stats.opens == 1)
            await twin.noise(100)
            await twin.send(b"[3G*4700186508*000B*LK,0,10,100]")
            (ev,) = await c.take(1)
        assert isinstance(ev, BandReport) and ev.battery_pct == 100
        assert codec.stats.skipped == 1 and codec.stats.skipped_bytes == 100
        assert codec.stats.last_skipped[-1].reason == "garbage"


async def test_ingics_tag_press_over_pty_and_gateway_fix() -> None:
    tag = SimWearer("AA:BB:CC:00:00:01", PATH, tag_layout="village-band")
    async with GatewayTwin("ingics", [tag], seed=5) as twin:
        reader = GatewayReader(open_gateway(twin.url), make_decoder("ingics"), backoff=FAST)
        async with Consumer(reader) as c:
            await until(lambda: reader.stats.opens == 1)
            await twin.report_all()
            twin.press_sos(tag.device)
            for _ in range(3):  # the button shows in three adverts: still one press
                await twin.report_all(split=True)
            await twin.send(twin.gateway_fix())
            got = await c.take(5)
        reports = [e for e in got if isinstance(e, BandReport)]
        assert [sorted(r.alarms) for r in reports] == [[], [BandAlarm.SOS], [], []]
        assert [r.press_count for r in reports] == [0, 1, 1, 1]
        assert isinstance(got[-1], GatewayFix) and got[-1].fix.acc_m == pytest.approx(5.0)


async def test_nmea_gateway_over_tcp() -> None:
    async with GatewayTwin("nmea", link="tcp", seed=1, gateway_pos=(30.25, 120.16)) as twin:
        reader = GatewayReader(open_gateway(twin.url), make_decoder("nmea"), backoff=FAST)
        async with Consumer(reader) as c:
            await until(lambda: reader.stats.opens == 1)  # pyserial flushes input while it opens
            await twin.connected()
            await twin.send(twin.gateway_fix(), split=True)
            _rmc, gga = await c.take(2)
        assert isinstance(gga, GatewayFix) and gga.fix.lat == pytest.approx(30.25) and gga.fix.acc_m == 6.0


async def test_a_device_that_never_appears_is_one_down_edge() -> None:
    edges = Edges()
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        await asyncio.sleep(0)

    reader = GatewayReader(
        SerialGatewayTransport("/nonexistent/ttyUSB9"),
        WatchDecoder(),
        on_state=edges,
        sleep=sleep,
        backoff=Backoff(initial_s=1, max_s=8, jitter=0.0),
        rng=random.Random(1),
    )
    async with Consumer(reader):
        await until(lambda: len(sleeps) >= 6)
    assert edges.calls[0][0] is False and "ttyUSB9" in edges.calls[0][1] and len(edges.calls) == 1
    assert sleeps[:6] == [1, 2, 4, 8, 8, 8]  # capped exponential backoff


def test_backoff_jitter_stays_within_bounds() -> None:
    rng = random.Random(9)
    b = Backoff(initial_s=1, max_s=60, jitter=0.2)
    for attempt in range(40):
        d = b.delay(attempt, rng)
        base = min(60, 2**attempt)
        assert 0.8 * base <= d <= 1.2 * base


async def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(GatewayConfigError):
        await SerialGatewayTransport("nosuchscheme://x").open()
    with pytest.raises(GatewayConfigError):
        SerialGatewayTransport("  ")
    t = SerialGatewayTransport("/nonexistent/tty")
    with pytest.raises(GatewayGone):
        await t.open()
    with pytest.raises(GatewayGone):
        await t.read()
    await t.close()


async def test_ble_transport_through_the_radio_twin() -> None:
    radio = SimAdvertSource()
    transport = BleGatewayTransport(radio, adapter="hci0")
    edges = Edges()
    reader = GatewayReader(transport, IngicsDecoder(), on_state=edges, backoff=FAST)
    twin = GatewayTwin("ingics", [SimWearer("aa:bb:cc:00:00:02", PATH, tag_layout="ingics-ibs03")])
    w = twin.wearers["aa:bb:cc:00:00:02"]
    async with Consumer(reader) as c:
        await until(lambda: radio.scanning)
        radio.advertise(w.device, -70, twin.advertisement_for(w))
        twin.press_sos(w.device)
        radio.advertise(w.device, -71, twin.advertisement_for(w))
        got = await c.take(2)
        assert [e.device for e in got] == ["AA:BB:CC:00:00:02"] * 2  # type: ignore[union-attr]
        assert [e.alarms for e in got] == [frozenset(), {BandAlarm.SOS}]  # type: ignore[union-attr]
        assert got[1].raw.startswith(b"$GPRP,AABBCC000002,hci0,-71,")  # type: ignore[union-attr]

        radio.fail_start = "no adapter"
        radio.lose("adapter removed")
        await until(lambda: reader.stats.open_failures >= 2)
        radio.fail_start = None
        await until(lambda: radio.scanning)
        radio.advertise(w.device, -60, twin.advertisement_for(w))
        (ev,) = await c.take(1)
        assert isinstance(ev, BandReport) and ev.alarms == frozenset()  # the held button is not a new press
    assert [up for up, _ in edges.calls] == [False, True] and radio.starts == 2
    assert not radio.scanning


def test_advert_line_and_opener() -> None:
    from drivers.wristband.bleadv import Advertisement

    line = advert_line("aa-bb-cc-dd-ee-ff", "hci1", -200, Advertisement(flags=6))
    assert line == b"$GPRP,AABBCCDDEEFF,hci1,-127,020106\r\n"
    t = open_gateway("ble:hci1")
    assert isinstance(t, BleGatewayTransport) and t.adapter == "hci1"
    assert open_gateway("ble:", ble_adapter="hci2").adapter == "hci2"  # type: ignore[attr-defined]
    s = open_gateway("socket://127.0.0.1:9", baudrate=9600)
    assert isinstance(s, SerialGatewayTransport) and s.baudrate == 9600


class VanishingTransport:
    """A gateway that delivers one chunk and is gone before the ack can be written.

    Written by hand (not a twin in sim/) because it is an exact fault, not a device: a real pty or socket
    cannot be made to fail precisely between the read and the write of the reply.
    """

    url = "vanishing"

    def __init__(self, chunk: bytes) -> None:
        self.chunks = [chunk]
        self.writes: list[bytes] = []
        self.opens = 0

    async def open(self) -> None:
        self.opens += 1
        if self.opens > 1:
            raise GatewayGone("unplugged")

    async def read(self) -> bytes:
        if not self.chunks:
            raise GatewayGone("unplugged")
        return self.chunks.pop(0)

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        raise GatewayGone("unplugged while writing the ack")

    async def close(self) -> None:
        return None


async def test_a_gateway_that_vanishes_after_an_sos_frame_still_yields_the_sos_and_the_rest() -> None:
    sos = encode_alarm("8800000001", ts=1_800_000_000, lat=22.5, lon=113.9, status=status_bits(BandAlarm.SOS))
    transport = VanishingTransport(sos + encode_lk("8800000002", battery_pct=70))
    edges = Edges()
    reader = GatewayReader(transport, WatchDecoder(), on_state=edges, backoff=FAST)
    async with Consumer(reader) as c:
        first, second = await c.take(2)
        await until(lambda: reader.stats.open_failures >= 1)
    assert isinstance(first, BandReport) and first.alarms == {BandAlarm.SOS}
    assert isinstance(second, BandReport) and second.kind == "LK"  # the rest of the chunk is not lost either
    assert transport.writes == [b"[3G*8800000001*0002*AL]"]  # one attempt; no ack written after the failure
    assert reader.stats.reply_failures == 1
    assert [up for up, _ in edges.calls] == [False] and "writing the ack" in edges.calls[0][1]


async def test_the_ack_waits_until_the_consumer_is_done_with_the_event() -> None:
    wearer = SimWearer("8800000015", PATH)
    async with GatewayTwin("watch", [wearer], seed=7) as twin:
        reader = GatewayReader(open_gateway(twin.url), WatchDecoder(), backoff=FAST)
        async with contextlib.aclosing(reader.events()) as events:
            twin.press_sos(wearer.device)
            next_event = asyncio.ensure_future(anext(events))
            await until(lambda: reader.stats.opens == 1)
            await twin.send(twin.frame_for(wearer) + twin.heartbeat(wearer.device))
            sos = await next_event
            assert isinstance(sos, BandReport) and sos.alarms == {BandAlarm.SOS}
            assert reader.codec.stats.replies == 0  # the consumer still holds the SOS: no ack computed or sent
            lk = await anext(events)  # done with the SOS: now its ack goes out
            assert isinstance(lk, BandReport) and lk.kind == "LK"
            await until(lambda: twin.reply_frames() == [b"[3G*8800000015*0002*AL]"])
            assert reader.codec.stats.replies == 1
