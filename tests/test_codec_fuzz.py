"""Property tests: no input crashes a decoder, no split changes what it decodes, buffers stay bounded."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.wristband.bleadv import AdvFormatError, parse_adv
from drivers.wristband.codec import SKIP_LOG_ENTRIES, make_decoder
from drivers.wristband.ingics import MAX_LINE_BYTES as INGICS_MAX
from drivers.wristband.nmea import MAX_LINE_BYTES as NMEA_MAX
from drivers.wristband.nmea import encode_gga
from drivers.wristband.watch import MAX_FRAME_BYTES, encode_lk, encode_position

LIMITS = {"watch": MAX_FRAME_BYTES, "ingics": INGICS_MAX, "nmea": NMEA_MAX}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# bytes that look like each protocol, so the fuzzer reaches the parsers and not only the framers
_pieces = st.sampled_from(
    [
        b"[",
        b"]",
        b"*",
        b",",
        b"$",
        b"\r\n",
        b"3G*8800000015*0002*",
        b"UD,",
        b"AL,",
        b"LK",
        b"ZJ*1*0001*",
        b"$GPRP,",
        b"$HBRP,",
        b"$GPSR,",
        b"$GPGGA,",
        b"$GPRMC,",
        b"CCB97E7361A4,",
        b"-49,",
        b"0201061AFF0D0083BC",
        b"A,",
        b"V,",
        b"22.5,",
        b"N,",
        b"00010000,",
        b"*47",
    ]
)
streams = st.lists(st.one_of(st.binary(max_size=40), _pieces), max_size=60).map(b"".join)


@FAST
@given(codec=st.sampled_from(sorted(LIMITS)), data=streams, cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_no_input_crashes_and_splits_do_not_matter(codec: str, data: bytes, cuts: list[int]) -> None:
    whole = make_decoder(codec)
    expected = whole.feed(data)
    d = make_decoder(codec)
    got = []
    last = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        got += d.feed(data[last:cut])
        last = cut
        assert d.buffered <= LIMITS[codec] + 1  # type: ignore[attr-defined]
    assert got == expected
    assert d.stats.skipped == whole.stats.skipped and d.stats.frames == whole.stats.frames
    assert len(d.stats.last_skipped) <= SKIP_LOG_ENTRIES
    for ev in got:
        d.reply(ev)  # replies never raise either


@FAST
@given(codec=st.sampled_from(sorted(LIMITS)), noise=st.binary(min_size=1, max_size=3000))
def test_a_good_frame_after_any_noise_still_decodes_once_the_line_resyncs(codec: str, noise: bytes) -> None:
    good = {
        "watch": encode_lk("8800000015"),
        "ingics": b"$HBRP,CB412F0C8EDC\r\n",
        "nmea": encode_gga(22.5, 113.9, when=__import__("datetime").datetime(2026, 1, 1)),
    }[codec]
    d = make_decoder(codec)
    d.feed(noise)
    d.feed(b"\n]")  # a line end / frame end closes whatever the noise left open
    d.reset()
    assert len(d.feed(good)) == 1
    assert d.buffered == 0  # type: ignore[attr-defined]


@FAST
@given(data=st.binary(max_size=300))
def test_adv_parser_raises_only_its_typed_error(data: bytes) -> None:
    try:
        parse_adv(data)
    except AdvFormatError:
        pass


@FAST
@given(
    lat=st.floats(-89.9, 89.9),
    lon=st.floats(-179.9, 179.9),
    battery=st.integers(0, 100),
    status=st.integers(0, 0xFFFFFFFF),
    valid=st.booleans(),
)
def test_watch_position_round_trip(lat: float, lon: float, battery: int, status: int, valid: bool) -> None:
    raw = encode_position(
        "8800000015", ts=1_795_420_800, lat=lat, lon=lon, valid=valid, battery_pct=battery, status=status
    )
    (ev,) = make_decoder("watch").feed(raw)
    assert ev.fix is not None and abs(ev.fix.lat - lat) < 1e-6 and abs(ev.fix.lon - lon) < 1e-6  # type: ignore
    assert ev.battery_pct == battery  # type: ignore[union-attr]
