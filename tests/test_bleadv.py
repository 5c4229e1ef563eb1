"""BLE advertising data: every AD type we read, round-trips, and malformed structures as typed errors."""

from __future__ import annotations

import pytest

from drivers.wristband.bleadv import (
    Advertisement,
    AdvFormatError,
    encode_adv,
    normalize_mac,
    parse_adv,
    uuid_from_short,
)

# from Ingics' iGS01S manual: an iBeacon (Apple 0x004C) with flags
IBEACON = bytes.fromhex("0201061AFF4C000215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6")
# ... and a gateway mesh node with a complete local name and flags
NAMED = bytes.fromhex("1309696773206D65736820233220285445535429020106")


def test_ibeacon_from_the_gateway_manual() -> None:
    adv = parse_adv(IBEACON)
    assert adv.flags == 0x06
    assert adv.manufacturer_data == {0x004C: bytes.fromhex("0215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6")}


def test_complete_name() -> None:
    adv = parse_adv(NAMED)
    assert adv.local_name == "igs mesh #2 (TEST)" and adv.flags == 6


def test_every_field_round_trips() -> None:
    adv = Advertisement(
        flags=0x06,
        local_name="手环-07",
        manufacturer_data={0x000D: b"\x83\xbc\x2c\x01\x01", 0xFFFF: b"VB"},
        service_data={
            uuid_from_short(0xFEAA): b"\x20\x00",  # Eddystone TLM-ish, 16-bit
            uuid_from_short(0x12345678): b"\x01",  # 32-bit
            "6e400001-b5a3-f393-e0a9-e50e24dcca9e": b"\x02\x03",  # 128-bit
        },
        service_uuids=(uuid_from_short(0x180F), uuid_from_short(0xABCDEF01), "6e400001-b5a3-f393-e0a9-e50e24dcca9e"),
        tx_power=-12,
    )
    assert parse_adv(encode_adv(adv)) == adv


def test_short_name_used_when_no_complete_name_and_padding_ends_data() -> None:
    assert parse_adv(b"\x04\x08abc" + b"\x00" * 10).local_name == "abc"
    assert parse_adv(b"\x04\x08abc\x04\x09xyz").local_name == "xyz"
    assert parse_adv(b"") == Advertisement()
    assert parse_adv(b"\x02\x99\x00") == Advertisement()  # unknown AD types are ignored


@pytest.mark.parametrize(
    "data",
    [
        b"\x05\xff\x0d\x00",  # runs past the end
        b"\x02\xff\x0d",  # manufacturer data without a full company id
        b"\x01\x01",  # flags with no byte
        b"\x02\x16\x01",  # 16-bit service data without a full UUID
        b"\x04\x03\x01\x02\x03",  # 16-bit UUID list of odd length
        b"\x05\x07\x01\x02\x03\x04",  # 128-bit UUID list too short
        b"\x01\x0a",  # tx power with no byte
        bytes(300),  # longer than any advertisement
    ],
)
def test_malformed_structures_raise_a_typed_error_with_the_bytes(data: bytes) -> None:
    with pytest.raises(AdvFormatError) as e:
        parse_adv(data)
    assert e.value.raw == data and e.value.reason


def test_encode_refuses_what_cannot_fit() -> None:
    with pytest.raises(AdvFormatError):
        encode_adv(Advertisement(manufacturer_data={1: bytes(260)}))
    with pytest.raises(AdvFormatError):
        encode_adv(Advertisement(service_uuids=("not-a-uuid",)))


def test_mac_normalization() -> None:
    assert normalize_mac("ccb97e7361a4") == "CC:B9:7E:73:61:A4"
    assert normalize_mac(" cc-b9-7e-73-61-a4 ") == normalize_mac("CC:B9:7E:73:61:A4")
    for bad in ("", "cc:b9", "zz:b9:7e:73:61:a4", "ccb97e7361a4ff"):
        with pytest.raises(ValueError):
            normalize_mac(bad)
