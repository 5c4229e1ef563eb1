"""Ingics-style gateway lines and the BLE tag table: presses, falls, battery, heartbeats, gateway fixes."""

from __future__ import annotations

import pytest

from drivers.wristband.bleadv import Advertisement, encode_adv
from drivers.wristband.events import BandAlarm, BandReport, FixSource, GatewayFix, GatewayHeartbeat
from drivers.wristband.ingics import MAX_LINE_BYTES, IngicsDecoder, encode_gprp, encode_gpsr, encode_hbrp
from drivers.wristband.tags import EVENT_BUTTON, EVENT_FALL, EVENT_MOVING, TAG_LAYOUTS, TagPresses, encode_tag, read_tag

# Lines as Ingics' iGS01S manual prints them (a named device, and an iBeacon) and our own shapes
MANUAL_GPRP = b"$GPRP,CCB97E7361A4,CB412F0C8EDC,-49,1309696773206D65736820233220285445535429020106\r\n"
MANUAL_IBEACON = (
    b"$GPRP,0C61CFC1452E,E7DAE08E6FC3,-44,0201061AFF4C000215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6,*1700000000\r\n"
)
TAG = "AA:BB:CC:00:00:07"


def _adv(layout: str, **kw: int) -> bytes:
    company, body = encode_tag(layout, **kw)
    return encode_adv(Advertisement(flags=6, manufacturer_data={company: body}))


def _line(layout: str, **kw: int) -> bytes:
    return encode_gprp(TAG, "CB412F0C8EDC", -61, _adv(layout, **kw))


def test_manual_lines_decode_as_tags_heard() -> None:
    d = IngicsDecoder()
    a, b = d.feed(MANUAL_GPRP + MANUAL_IBEACON)
    assert isinstance(a, BandReport) and a.device == "CC:B9:7E:73:61:A4" and a.rssi == -49 and a.kind == "GPRP"
    assert isinstance(b, BandReport) and b.device == "0C:61:CF:C1:45:2E" and b.alarms == frozenset()
    assert a.raw == MANUAL_GPRP.rstrip() and d.stats.frames == 2


@pytest.mark.parametrize("layout", [x.name for x in TAG_LAYOUTS])
def test_every_tag_layout_round_trips_battery_and_button(layout: str) -> None:
    d = IngicsDecoder()
    (idle,) = d.feed(_line(layout, battery_pct=50, press_count=4))
    (pressed,) = d.feed(_line(layout, battery_pct=50, event=EVENT_BUTTON, press_count=5))
    assert isinstance(idle, BandReport) and isinstance(pressed, BandReport)
    assert idle.battery_pct == pressed.battery_pct == 50
    assert idle.alarms == frozenset() and pressed.alarms == {BandAlarm.SOS}


def test_level_bit_tag_held_button_is_one_press_and_fall_is_an_edge() -> None:
    d = IngicsDecoder()
    seq = [EVENT_BUTTON, EVENT_BUTTON | EVENT_MOVING, EVENT_BUTTON, 0, EVENT_BUTTON, EVENT_FALL, EVENT_FALL]
    alarms = [d.feed(_line("ingics-ibs01", event=e))[0].alarms for e in seq]  # type: ignore[union-attr]
    assert alarms == [{BandAlarm.SOS}, set(), set(), set(), {BandAlarm.SOS}, {BandAlarm.FALL}, set()]


def test_counter_tag_missed_frames_lose_no_press_and_a_held_button_is_one() -> None:
    d = IngicsDecoder()
    presses = [(0, 0), (EVENT_BUTTON, 1), (EVENT_BUTTON, 1), (0, 3), (EVENT_BUTTON, 3), (0, 3)]
    got = [d.feed(_line("village-band", event=e, press_count=n))[0] for e, n in presses]
    assert [r.alarms for r in got] == [set(), {BandAlarm.SOS}, set(), {BandAlarm.SOS}, set(), set()]  # type: ignore
    assert [r.press_count for r in got] == [0, 1, 1, 3, 3, 3]  # type: ignore[union-attr]


def test_tag_memory_is_bounded() -> None:
    p = TagPresses(max_tags=3)
    reading = read_tag(Advertisement(manufacturer_data=dict([encode_tag("village-band")])))
    assert reading is not None
    for i in range(10):
        p.alarms(f"tag{i}", reading)
    assert len(p) == 3


def test_battery_from_coin_cell_voltage() -> None:
    company, body = 0x000D, b"\x83\xbc" + (300).to_bytes(2, "little") + b"\x00"  # 3.00 V
    assert read_tag(Advertisement(manufacturer_data={company: body})).battery_pct == 100  # type: ignore[union-attr]
    body = b"\x83\xbc" + (260).to_bytes(2, "little") + b"\x00"  # 2.60 V
    assert read_tag(Advertisement(manufacturer_data={company: body})).battery_pct == 50  # type: ignore[union-attr]
    assert read_tag(Advertisement(manufacturer_data={company: b"\x83\xbc\x01"})) is None  # too short: not a tag


def test_heartbeat_and_gateway_position() -> None:
    d = IngicsDecoder()
    hb, fix, fix2 = d.feed(
        encode_hbrp("CB412F0C8EDC", ts=1700000000)
        + encode_gpsr("gw-1", 22.5, 113.9, hdop=2.0, ts=1700000001)
        + b"$GPSR,gw-1,0,0\n"
    )
    assert hb == GatewayHeartbeat("CB:41:2F:0C:8E:DC", raw=b"$HBRP,CB412F0C8EDC,*1700000000")
    assert isinstance(fix, GatewayFix) and fix.fix.acc_m == 10.0 and fix.fix.fix_ts == 1700000001
    assert fix.fix.source is FixSource.GPS and fix.fix.usable
    assert isinstance(fix2, GatewayFix) and fix2.fix.source is FixSource.NONE and fix2.fix.acc_m is None


@pytest.mark.parametrize(
    "line",
    [
        b"$GPRP,NOTAMAC,CB412F0C8EDC,-49,0201\r\n",
        b"$GPRP,CCB97E7361A4,CB412F0C8EDC,loud,0201\r\n",
        b"$GPRP,CCB97E7361A4,CB412F0C8EDC,-49,XYZ\r\n",
        b"$GPRP,CCB97E7361A4\r\n",
        b"$WHAT,1,2,3\r\n",
        b"$GPSR,gw,95,10\r\n",
        b"$HBRP\r\n",
        b"$GPRP,\xff\xfe\r\n",
    ],
)
def test_malformed_lines_are_skipped_counted_and_kept(line: bytes) -> None:
    d = IngicsDecoder()
    assert d.feed(line + MANUAL_GPRP)[0].device == "CC:B9:7E:73:61:A4"  # type: ignore[union-attr]
    assert d.stats.malformed == 1 and d.stats.last_skipped[0].raw == line.rstrip()


def test_unreadable_adv_still_reports_the_tag_heard() -> None:
    d = IngicsDecoder()
    (ev,) = d.feed(b"$GPRP,CCB97E7361A4,CB412F0C8EDC,-49,05FF0D00\r\n")  # AD structure longer than the data
    assert isinstance(ev, BandReport) and ev.device == "CC:B9:7E:73:61:A4" and ev.battery_pct is None
    assert d.stats.malformed == 1


def test_splits_garbage_truncation_and_oversize() -> None:
    stream = MANUAL_GPRP + _line("village-band", event=EVENT_BUTTON, press_count=1) + MANUAL_IBEACON
    whole = IngicsDecoder().feed(stream)
    d = IngicsDecoder()
    assert [e for i in range(len(stream)) for e in d.feed(stream[i : i + 1])] == whole
    d = IngicsDecoder()
    noisy = b"\x00junk" + MANUAL_GPRP + b"$GPRP,CCB9" + b"$" + b"A" * (MAX_LINE_BYTES + 5) + b"\r\n" + MANUAL_IBEACON
    got = d.feed(noisy)
    assert [e.device for e in got] == ["CC:B9:7E:73:61:A4", "0C:61:CF:C1:45:2E"]  # type: ignore[union-attr]
    assert [s.reason for s in d.stats.last_skipped] == ["garbage", "truncated", "oversize"]
    assert d.stats.oversize == 1 and d.buffered == 0
    assert d.reply(got[0]) is None
