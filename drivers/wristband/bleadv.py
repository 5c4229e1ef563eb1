"""BLE advertising data (Core Spec Vol 3 Part C §11, Supplement Part A): parse and build AD structures.

An advertisement is a run of `len, type, data[len-1]` structures; a zero length ends the significant part
(the rest is padding). Used by the Ingics line codec (`advhex` field) and by the local-radio path, which
rebuilds the bytes from bleak's parsed fields so both paths go through one tag decoder. Sans-I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from drivers.wristband.codec import CodecError

AD_FLAGS = 0x01
AD_UUID16_INCOMPLETE, AD_UUID16 = 0x02, 0x03
AD_UUID32_INCOMPLETE, AD_UUID32 = 0x04, 0x05
AD_UUID128_INCOMPLETE, AD_UUID128 = 0x06, 0x07
AD_NAME_SHORT, AD_NAME = 0x08, 0x09
AD_TX_POWER = 0x0A
AD_SERVICE_DATA16 = 0x16
AD_SERVICE_DATA32 = 0x20
AD_SERVICE_DATA128 = 0x21
AD_MANUFACTURER = 0xFF

MAX_ADV_BYTES = 255  # extended advertising data can reach 254 bytes (plus a scan response merged by bleak)

_BASE_SUFFIX = "-0000-1000-8000-00805f9b34fb"  # the Bluetooth Base UUID: 0000xxxx-0000-1000-8000-00805f9b34fb
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?:[:-]?[0-9A-Fa-f]{2}){5}")


class AdvFormatError(CodecError):
    """Advertising data whose structures do not fit (truncated, or a field too short for its type)."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    flags: int | None = None
    local_name: str | None = None
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)  # company id -> data after the id
    service_data: dict[str, bytes] = field(default_factory=dict)  # 128-bit UUID string (lowercase) -> data
    service_uuids: tuple[str, ...] = ()
    tx_power: int | None = None


def uuid_from_short(value: int) -> str:
    """A 16- or 32-bit UUID in its full 128-bit form, as bleak reports it."""
    return f"{value:08x}{_BASE_SUFFIX}"


def normalize_mac(text: str) -> str:
    """`ccb97e7361a4`, `CC-B9-...`, `cc:b9:...` -> `CC:B9:7E:73:61:A4`. Raises ValueError for anything else.

    Every BLE path reports tags in this form, so a `[[wearer]] device` MAC is written one way whatever
    gateway hears the tag.
    """
    t = text.strip()
    if not _MAC.fullmatch(t):
        raise ValueError(f"not a MAC address: {text[:40]!r}")
    digits = re.sub(r"[:-]", "", t).upper()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def parse_adv(data: bytes) -> Advertisement:
    """The fields of raw advertising data. Unknown AD types are ignored; broken structure raises AdvFormatError."""
    if len(data) > MAX_ADV_BYTES:
        raise AdvFormatError(f"advertising data of {len(data)} bytes exceeds {MAX_ADV_BYTES}", data)
    flags = name = tx = None
    short_name = None
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    uuids: list[str] = []
    i = 0
    while i < len(data):
        length = data[i]
        if length == 0:
            break  # padding
        if i + 1 + length > len(data):
            raise AdvFormatError(f"AD structure at {i} needs {length} bytes, {len(data) - i - 1} left", data)
        ad_type, body = data[i + 1], data[i + 2 : i + 1 + length]
        i += 1 + length
        if ad_type == AD_FLAGS:
            flags = _need(body, 1, "flags", data)[0]
        elif ad_type in (AD_NAME, AD_NAME_SHORT):
            text = body.decode("utf-8", errors="replace")
            if ad_type == AD_NAME:
                name = text
            else:
                short_name = text
        elif ad_type == AD_TX_POWER:
            tx = int.from_bytes(_need(body, 1, "tx power", data)[:1], "little", signed=True)
        elif ad_type == AD_MANUFACTURER:
            _need(body, 2, "manufacturer data", data)
            manufacturer[int.from_bytes(body[:2], "little")] = bytes(body[2:])
        elif ad_type in (AD_SERVICE_DATA16, AD_SERVICE_DATA32, AD_SERVICE_DATA128):
            size = {AD_SERVICE_DATA16: 2, AD_SERVICE_DATA32: 4, AD_SERVICE_DATA128: 16}[ad_type]
            _need(body, size, "service data", data)
            service_data[_uuid(body[:size])] = bytes(body[size:])
        elif ad_type in (AD_UUID16_INCOMPLETE, AD_UUID16, AD_UUID32_INCOMPLETE, AD_UUID32):
            size = 2 if ad_type in (AD_UUID16_INCOMPLETE, AD_UUID16) else 4
            if len(body) % size:
                raise AdvFormatError(f"UUID list of {len(body)} bytes is not a multiple of {size}", data)
            uuids += [_uuid(body[k : k + size]) for k in range(0, len(body), size)]
        elif ad_type in (AD_UUID128_INCOMPLETE, AD_UUID128):
            if len(body) % 16:
                raise AdvFormatError(f"UUID list of {len(body)} bytes is not a multiple of 16", data)
            uuids += [_uuid(body[k : k + 16]) for k in range(0, len(body), 16)]
    return Advertisement(
        flags=flags,
        local_name=name if name is not None else short_name,
        manufacturer_data=manufacturer,
        service_data=service_data,
        service_uuids=tuple(uuids),
        tx_power=tx,
    )


def encode_adv(adv: Advertisement) -> bytes:
    """AD structures for `adv` (shortest UUID form that round-trips). Raises AdvFormatError past MAX_ADV_BYTES."""
    out = bytearray()
    if adv.flags is not None:
        out += _ad(AD_FLAGS, bytes([adv.flags & 0xFF]))
    if adv.local_name is not None:
        out += _ad(AD_NAME, adv.local_name.encode("utf-8"))
    if adv.tx_power is not None:
        out += _ad(AD_TX_POWER, adv.tx_power.to_bytes(1, "little", signed=True))
    short = [_short(u) for u in adv.service_uuids]
    for size, ad_type in ((2, AD_UUID16), (4, AD_UUID32), (16, AD_UUID128)):
        chunk = b"".join(b for b in short if len(b) == size)
        if chunk:
            out += _ad(ad_type, chunk)
    for uuid, body in adv.service_data.items():
        key = _short(uuid)
        ad_type = {2: AD_SERVICE_DATA16, 4: AD_SERVICE_DATA32, 16: AD_SERVICE_DATA128}[len(key)]
        out += _ad(ad_type, key + body)
    for company, body in adv.manufacturer_data.items():
        out += _ad(AD_MANUFACTURER, (company & 0xFFFF).to_bytes(2, "little") + body)
    if len(out) > MAX_ADV_BYTES:
        raise AdvFormatError(f"advertisement encodes to {len(out)} bytes, more than {MAX_ADV_BYTES}", bytes(out))
    return bytes(out)


def _ad(ad_type: int, body: bytes) -> bytes:
    if len(body) > 254:
        raise AdvFormatError(f"AD field of {len(body)} bytes does not fit one structure", body)
    return bytes([len(body) + 1, ad_type]) + body


def _need(body: bytes, size: int, what: str, data: bytes) -> bytes:
    if len(body) < size:
        raise AdvFormatError(f"{what} needs {size} bytes, got {len(body)}", data)
    return body


def _uuid(raw: bytes) -> str:
    if len(raw) in (2, 4):
        return uuid_from_short(int.from_bytes(raw, "little"))
    h = raw[::-1].hex()  # 128-bit UUIDs are little-endian on air
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _short(uuid: str) -> bytes:
    u = uuid.lower()
    digits = u.replace("-", "")
    try:
        if len(u) == 36 and u.endswith(_BASE_SUFFIX):
            value = int(u[:8], 16)
            return value.to_bytes(2 if value <= 0xFFFF else 4, "little")
        if len(digits) == 32:
            return bytes.fromhex(digits)[::-1]
    except ValueError as e:
        raise AdvFormatError(f"bad UUID {uuid[:40]!r}") from e
    raise AdvFormatError(f"bad UUID {uuid[:40]!r}")
