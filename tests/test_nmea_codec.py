"""NMEA 0183 GGA/RMC: checksums enforced, coordinates, accuracy from HDOP, dates carried from RMC to GGA."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drivers.wristband.events import FixSource, GatewayFix
from drivers.wristband.nmea import MAX_LINE_BYTES, NmeaDecoder, checksum, encode_gga, encode_rmc, encode_sentence

# the textbook sentences (NMEA 0183 reference examples, as reproduced everywhere)
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
WHEN = datetime(2026, 11, 23, 8, 30, 15, tzinfo=UTC)


def test_textbook_sentences() -> None:
    d = NmeaDecoder()
    rmc, gga = d.feed(RMC + GGA)
    assert isinstance(rmc, GatewayFix) and isinstance(gga, GatewayFix)
    assert rmc.fix.lat == pytest.approx(48.1173) and rmc.fix.lon == pytest.approx(11.516667)
    assert rmc.fix.speed_kmh == pytest.approx(22.4 * 1.852) and rmc.fix.course_deg == 84.4
    assert rmc.fix.fix_ts == datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC).timestamp()
    assert rmc.fix.acc_m is None  # no GGA seen yet
    assert gga.fix.acc_m == pytest.approx(4.5) and gga.fix.sats == 8 and gga.fix.source is FixSource.GPS
    assert gga.fix.fix_ts == rmc.fix.fix_ts  # GGA takes RMC's date
    assert NmeaDecoder().feed(GGA)[0].fix.fix_ts is None  # type: ignore[union-attr]


@pytest.mark.parametrize("lat,lon", [(22.5431, 114.0579), (-33.8688, 151.2093), (40.7128, -74.006), (0.5, -0.5)])
def test_round_trip_all_hemispheres(lat: float, lon: float) -> None:
    d = NmeaDecoder()
    rmc, gga = d.feed(encode_rmc(lat, lon, when=WHEN, speed_kmh=10) + encode_gga(lat, lon, when=WHEN, hdop=2.0))
    for ev in (rmc, gga):
        assert isinstance(ev, GatewayFix)
        assert ev.fix.lat == pytest.approx(lat, abs=1e-6) and ev.fix.lon == pytest.approx(lon, abs=1e-6)
        assert ev.fix.fix_ts == WHEN.timestamp()
    assert gga.fix.acc_m == 10.0 and rmc.fix.speed_kmh == pytest.approx(10, abs=0.01)  # type: ignore[union-attr]
    assert encode_gga(lat, lon, when=WHEN, talker="GN").startswith(b"$GNGGA")
    assert NmeaDecoder().feed(encode_gga(lat, lon, when=WHEN, talker="BD"))  # BeiDou talker too


def test_bad_checksums_are_dropped_and_counted() -> None:
    d = NmeaDecoder()
    flipped = GGA.replace(b"4807.038", b"4807.039")
    no_sum = GGA.split(b"*")[0] + b"\r\n"
    bad_hex = GGA.split(b"*")[0] + b"*ZZ\r\n"
    assert d.feed(flipped + no_sum + bad_hex) == []
    assert d.stats.checksum == 3 and d.stats.skipped == 3
    assert [s.reason for s in d.stats.last_skipped] == ["checksum mismatch", "checksum missing", "checksum not hex"]


def test_no_fix_sentences_and_other_types_carry_nothing() -> None:
    d = NmeaDecoder()
    out = d.feed(
        encode_gga(1, 1, when=WHEN, quality=0)
        + encode_rmc(1, 1, when=WHEN, valid=False)
        + encode_sentence("GPGSV,1,1,00")
        + encode_sentence("GPTXT,01,01,02,ANTENNA OK")
    )
    assert out == [] and d.nofix == 2 and d.stats.frames == 4 and d.stats.skipped == 0


@pytest.mark.parametrize(
    "body",
    [
        "GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "GPGGA,123519,4807.038,Q,01131.000,E,1,08,0.9",
        "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,320394,003.1,W",
        "GPGGA,1",
        "GPRMC,256199,A,4807.038,N,01131.000,E,0,0,230394",
        "GPGGA,123519,9107.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
    ],
)
def test_malformed_sentences_with_good_checksums(body: str) -> None:
    d = NmeaDecoder()
    assert d.feed(encode_sentence(body) + GGA)[0].fix.lat == pytest.approx(48.1173)  # type: ignore[union-attr]
    assert d.stats.malformed == 1


def test_splits_garbage_and_oversize() -> None:
    stream = RMC + GGA + RMC
    whole = NmeaDecoder().feed(stream)
    d = NmeaDecoder()
    assert [e for i in range(len(stream)) for e in d.feed(stream[i : i + 1])] == whole
    d = NmeaDecoder()
    got = d.feed(b"\xff\xfe" + b"$GP" + b"9" * (MAX_LINE_BYTES + 1) + b"\r\n" + GGA)
    assert len(got) == 1 and d.stats.oversize == 1 and d.stats.skipped == 2 and d.buffered == 0
    assert checksum(b"AB") == 0x41 ^ 0x42
