"""The watch protocol: every Traccar test frame, round-trips, splits, garbage, replies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.wristband.events import BandAlarm, BandReport, FixSource
from drivers.wristband.watch import (
    MAX_FRAME_BYTES,
    Cell,
    WatchDecoder,
    WifiAp,
    encode_alarm,
    encode_frame,
    encode_lk,
    encode_position,
    reply_for,
    status_bits,
)

S, R, F, LB, G = BandAlarm.SOS, BandAlarm.BAND_REMOVED, BandAlarm.FALL, BandAlarm.LOW_BATTERY, BandAlarm.GENERAL


def _t(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


# What each line of traccar-watch-frames.tsv says, by device id and frame type, in file order:
# (alarms, fix source or None for no fix, lat, lon, battery, fix time, extra checks)
EXPECTED: list[dict[str, object]] = [
    {"alarms": {S}, "source": FixSource.NONE, "lat": 0.0, "lon": 0.0, "battery": 22},
    {"alarms": {S}, "source": FixSource.LBS, "lat": 0.0, "lon": 0.0, "battery": 81},
    {"alarms": {R}, "source": FixSource.WIFI, "lat": 0.0, "lon": 0.0, "battery": 44},
    {"alarms": {R}, "source": FixSource.GPS, "lat": 22.536207, "lon": 113.938673},
    {"alarms": {R}, "source": FixSource.WIFI, "lat": 0.0, "lon": 0.0, "battery": 2, "steps": 11089},
    {"alarms": {F}, "source": FixSource.GPS, "lat": 47.083950, "lon": 15.4821850},
    {"alarms": {LB}, "source": FixSource.GPS, "lat": 22.571707, "lon": 113.8613968, "battery": 90, "sats": 7},
    {"alarms": {G}, "source": FixSource.LBS, "lat": 54.427538, "lon": -6.409275},
    {"alarms": {G}, "source": FixSource.NONE, "lat": 40.058413, "lon": -76.336618},
    {"kind": "LK", "source": None, "reply": b"[SG*8800000015*0002*LK]"},
    {"kind": "LK", "source": None, "battery": None, "reply": b"[SG*9081000548*0002*LK]"},
    {"kind": "LK", "source": None, "battery": 100, "steps": 0},
    {"kind": "TKQ", "source": None, "reply": b"[3G*8800000015*0003*TKQ]"},
    {
        "alarms": set(),
        "source": FixSource.GPS,
        "lat": 22.57171,
        "lon": 113.86140,
        "battery": 90,
        "time": _t("2014-04-22 13:46:52"),
        "speed": 0.1,
        "sats": 7,
    },
    {"alarms": set(), "source": FixSource.LBS, "lat": -33.48037, "lon": -70.76307, "time": _t("2016-07-21 23:16:01")},
    {"alarms": set(), "source": FixSource.GPS, "lat": 22.761162, "lon": 114.360192, "battery": 64, "sats": 14},
    {"alarms": set(), "source": FixSource.GPS, "lat": 48.779045, "lon": 9.1574736, "battery": 77},
    {"alarms": set(), "source": FixSource.WIFI, "lat": 0.0, "lon": 0.0, "battery": 67},
    {"alarms": set(), "source": FixSource.WIFI, "lat": 18.5122, "lon": 73.7750283, "steps": 4262},
    {"alarms": set(), "source": FixSource.WIFI, "lat": 54.739618, "lon": 25.273213},
    {"alarms": set(), "source": FixSource.LBS, "lat": 0.0, "lon": 0.0, "battery": 19},
    {"kind": "oxygen", "source": None, "vitals": (("spo2", 98.0),)},
    {"kind": "TEMP", "source": None, "vitals": (("temp_c", 36.5),)},
    {"kind": "bphrt", "source": None, "vitals": (("bp_high", 120.0), ("bp_low", 79.0), ("heart_rate", 73.0))},
    {"kind": "PULSE", "source": None, "vitals": (("heart_rate", 72.0),)},
]


def _frames(peers: Path) -> list[tuple[bytes, str]]:
    out = []
    for line in (peers / "traccar-watch-frames.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            frame, note = line.split("\t", 1)
            out.append((frame.encode(), note))
    return out


def test_every_traccar_frame_decodes_to_what_its_line_says(peers: Path) -> None:
    frames = _frames(peers)
    assert len(frames) == len(EXPECTED) == 25
    for (raw, note), want in zip(frames, EXPECTED, strict=True):
        d = WatchDecoder()
        (ev,) = d.feed(raw)
        assert isinstance(ev, BandReport), note
        assert ev.raw == raw and d.stats.frames == 1 and d.stats.skipped == 0, note
        assert ev.device == raw[1:-1].split(b"*")[1].decode(), note
        if "alarms" in want:
            assert ev.alarms == want["alarms"], note
        if want["source"] is None:
            assert ev.fix is None, note  # no-position frames give no fix
        else:
            assert ev.fix is not None and ev.fix.source is want["source"], note
            assert ev.fix.usable == (want["source"] is FixSource.GPS), note
            assert ev.fix.lat == pytest.approx(want["lat"], abs=1e-5), note
            assert ev.fix.lon == pytest.approx(want["lon"], abs=1e-5), note
            assert ev.fix.fix_ts is not None, note
        for key, attr in (("battery", "battery_pct"), ("steps", "steps"), ("kind", "kind"), ("vitals", "vitals")):
            if key in want:
                assert getattr(ev, attr) == want[key], note
        if "time" in want:
            assert ev.fix.fix_ts == want["time"], note  # type: ignore[union-attr]
        if "speed" in want:
            assert ev.fix.speed_kmh == want["speed"], note  # type: ignore[union-attr]
        if "sats" in want:
            assert ev.fix.sats == want["sats"], note  # type: ignore[union-attr]
        expected_reply = want.get("reply")
        if expected_reply is None and ev.kind.startswith("AL"):
            expected_reply = b"*0002*AL]"
        if expected_reply is None and ev.kind == "LK":
            expected_reply = b"*0002*LK]"
        answer = d.reply(ev)
        if expected_reply is None:
            assert answer is None, note
        else:
            assert answer is not None and answer.endswith(expected_reply), note  # type: ignore[arg-type]


def test_all_traccar_frames_in_one_stream_whole_bytewise_and_with_garbage(peers: Path) -> None:
    raws = [raw for raw, _ in _frames(peers)]
    stream = b"".join(raws)
    whole = WatchDecoder().feed(stream)
    assert [e.raw for e in whole] == raws  # type: ignore[union-attr]

    d = WatchDecoder()
    bytewise = [ev for i in range(len(stream)) for ev in d.feed(stream[i : i + 1])]
    assert bytewise == whole and d.buffered == 0

    noisy = b"\x00\xffnoise" + b"\r\n".join(raws) + b"\r\n" + b"[3G*123*0002*LK"  # CRLF between frames; a tail
    d = WatchDecoder()
    assert d.feed(noisy) == whole
    assert d.stats.skipped == 1 and d.stats.last_skipped[0].raw == b"\x00\xffnoise"
    assert d.buffered == len(b"[3G*123*0002*LK")
    assert [e.kind for e in d.feed(b"]")] == ["LK"]  # type: ignore[union-attr]


def test_reply_for_zj_keeps_the_index_and_ignores_positions() -> None:
    assert reply_for(b"[ZJ*014111001332708*0075*0064*AL,040418]") == b"[ZJ*014111001332708*0075*0002*AL]"
    assert reply_for(b"[3G*1*0002*UD,1]") is None
    assert reply_for(b"garbage") is None
    assert reply_for(b"[3G*1*0004*TKQ2]") == b"[3G*1*0004*TKQ2]"


def test_encoders_round_trip_every_frame_type() -> None:
    ts = _t("2026-11-23 08:30:05")
    cells = (Cell(9360, 4082, 131), Cell(9360, 4092, 148))
    wifi = (WifiAp("村委会", "68:77:24:1b:e7:a7", -59),)
    frames = {
        "UD": encode_position("8800000015", ts=ts, lat=30.25, lon=-120.5, sats=9, battery_pct=55, steps=12),
        "UD2": encode_position("8800000015", kind="UD2", ts=ts, lat=-30.25, lon=120.5, valid=False, cells=cells),
        "UD_LTE": encode_position("8800000015", kind="UD_LTE", ts=ts, lat=0, lon=0, valid=False, wifi=wifi),
        "WT": encode_position("8800000015", kind="WT", ts=ts, lat=1, lon=2, old_status=True, status=1),
        "AL": encode_alarm("8800000015", ts=ts, lat=30.25, lon=120.5, status=status_bits(BandAlarm.SOS)),
        "AL_LTE": encode_alarm(
            "8800000015",
            kind="AL_LTE",
            maker="SG",
            ts=ts,
            lat=30.25,
            lon=120.5,
            status=status_bits(BandAlarm.FALL, BandAlarm.BAND_REMOVED),
            index="0001",
        ),
        "LK": encode_lk("8800000015", battery_pct=80, steps=5),
    }
    got = {k: WatchDecoder().feed(v)[0] for k, v in frames.items()}
    ud = got["UD"]
    assert isinstance(ud, BandReport) and ud.fix is not None
    assert (ud.fix.lat, ud.fix.lon, ud.fix.fix_ts, ud.fix.sats, ud.fix.source) == (30.25, -120.5, ts, 9, FixSource.GPS)
    assert (ud.battery_pct, ud.steps, ud.alarms) == (55, 12, frozenset())
    assert got["UD2"].fix.source is FixSource.LBS and got["UD2"].fix.lat == -30.25  # type: ignore[union-attr]
    assert got["UD_LTE"].fix.source is FixSource.WIFI  # type: ignore[union-attr]
    assert got["WT"].alarms == {BandAlarm.LOW_BATTERY}  # type: ignore[union-attr]
    assert got["AL"].alarms == {BandAlarm.SOS}  # type: ignore[union-attr]
    assert got["AL_LTE"].alarms == {BandAlarm.FALL, BandAlarm.BAND_REMOVED}  # type: ignore[union-attr]
    assert reply_for(frames["AL_LTE"]) == b"[SG*8800000015*0001*0002*AL]"
    assert (got["LK"].battery_pct, got["LK"].steps) == (80, 5)  # type: ignore[union-attr]
    # the length field we write is right (hex of the content's UTF-8 length)
    raw = frames["UD_LTE"]
    content = raw[1:-1].split(b"*", 3)[3]
    assert int(raw.split(b"*")[2], 16) == len(content)


def test_malformed_truncated_and_oversize_frames_are_skipped_with_their_bytes() -> None:
    d = WatchDecoder()
    good = encode_lk("42")
    big = b"[3G*1*0000*TK," + b"x" * (MAX_FRAME_BYTES + 10) + b"]"
    out = d.feed(b"[bad frame]" + b"[3G*1*0002*LK" + good + big + good)
    assert [e.device for e in out] == ["42", "42"]  # type: ignore[union-attr]
    reasons = [s.reason.split(":")[0] for s in d.stats.last_skipped]
    assert reasons == ["malformed", "truncated", "oversize"]
    assert d.stats.malformed == 1 and d.stats.oversize == 1
    assert d.stats.last_skipped[0].raw == b"[bad frame]"
    assert d.stats.last_skipped[2].size == len(big)

    d = WatchDecoder()  # the same, one byte at a time: never holds more than the limit
    peak = 0
    for b in big + good:
        d.feed(bytes([b]))
        peak = max(peak, d.buffered)
    assert peak <= MAX_FRAME_BYTES and d.stats.oversize == 1 and d.stats.frames == 1


def test_reset_drops_a_partial_frame() -> None:
    d = WatchDecoder()
    assert d.feed(b"[3G*1*0002*L") == []
    d.reset()
    assert d.feed(b"K]") == [] and d.stats.last_skipped[-1].reason == "truncated"
    assert d.feed(encode_frame("3G", "1", "LK"))[0].kind == "LK"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "frame",
    [
        b"[3G*1*0010*UD,xx,yy,A,abc,N,def,E]",  # garbled position: report, no fix
        b"[3G*1*0010*AL,010120,000000,A,95.0,N,10.0,E,0,0,0,0,0,50,0,0,00010000]",  # latitude out of range
        b"[3G*1*0010*AL,311399,256199,A]",  # short alarm frame: still an alarm
    ],
)
def test_a_garbled_position_never_loses_the_alarm_or_the_band(frame: bytes) -> None:
    (ev,) = WatchDecoder().feed(frame)
    assert isinstance(ev, BandReport) and ev.device == "1" and ev.fix is None
    if ev.kind == "AL":
        assert ev.alarms  # SOS or GENERAL
