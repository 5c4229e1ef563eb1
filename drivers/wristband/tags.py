"""What a BLE tag's advertisement means: battery, button (SOS), fall. One table, one interpreter, sans-I/O.

Both BLE paths (an Ingics-style gateway's `$GPRP` lines and the box's own radio via bleak) end here.
The layouts sit in TAG_LAYOUTS and nowhere else; docs/wristbands-codecs.md gives their sources.

Offsets count from the first byte after the 2-byte company id in the manufacturer-specific data.

- Ingics iBS01 (company 0x0059) and iBS03/iBS04 (company 0x000D), per Ingics' "iBS Sensor Beacon Payload"
  app note as also read by obniz's parts library: magic `80 BC` (iBS01) / `83 BC` (iBS03/04), battery u16 LE
  in 10 mV, then an event byte (bit 0 button, bit 1 moving, bit 2 hall sensor, bit 3 fall on iBS01G).
  These tags have a level bit only.
- "village-band" (company 0xFFFF, the SIG's id for internal/test use; magic `56 42` = "VB"): the layout this
  project asks band vendors for: battery %, event byte as above, then a u16 LE button press counter.

Press logic: with a counter, a press is a change of the counter (so a held button is one press and a frame
missed in between loses nothing); with a level bit only, a press is the bit going 0 -> 1 as seen from the box
(a tag seen for the first time with the bit set counts). Per-tag memory is bounded (MAX_TAGS, least recently
seen forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from drivers.wristband.bleadv import Advertisement
from drivers.wristband.events import BandAlarm

MAX_TAGS = 4096  # tags remembered for press/fall edge detection; a village has a few hundred

EVENT_BUTTON = 0x01
EVENT_MOVING = 0x02
EVENT_HALL = 0x04
EVENT_FALL = 0x08

_EVENT_ALARMS: tuple[tuple[int, BandAlarm], ...] = ((EVENT_BUTTON, BandAlarm.SOS), (EVENT_FALL, BandAlarm.FALL))


@dataclass(frozen=True, slots=True)
class TagLayout:
    name: str
    company: int
    magic: bytes  # first bytes of the data after the company id
    battery_offset: int
    battery_kind: str  # "mv10_u16le": u16 LE in 10 mV units on a 3 V coin cell; "pct_u8": percent
    event_offset: int
    counter_offset: int | None = None  # u16 LE press counter, where the tag has one
    subtype: int | None = None  # Ingics' model byte at offset 11 of their 15-byte body (not checked on input)

    @property
    def min_len(self) -> int:
        ends = [len(self.magic), self.battery_offset + (2 if self.battery_kind == "mv10_u16le" else 1)]
        ends.append(self.event_offset + 1)
        if self.counter_offset is not None:
            ends.append(self.counter_offset + 2)
        return max(ends)


TAG_LAYOUTS: tuple[TagLayout, ...] = (
    TagLayout("ingics-ibs01", 0x0059, b"\x80\xbc", 2, "mv10_u16le", event_offset=4, subtype=0x03),
    TagLayout("ingics-ibs01-0d", 0x000D, b"\x80\xbc", 2, "mv10_u16le", event_offset=4, subtype=0x03),
    TagLayout("ingics-ibs03", 0x000D, b"\x83\xbc", 2, "mv10_u16le", event_offset=4, subtype=0x10),
    TagLayout("village-band", 0xFFFF, b"VB", battery_offset=2, battery_kind="pct_u8", event_offset=3, counter_offset=4),
)

# a CR2032/CR2477 coin cell: ~3.0 V fresh, the tag browns out near 2.2 V; linear in between is close enough
# for a "low battery" warning (the cell's curve is flat, then falls fast: warn early rather than late)
CELL_FULL_MV, CELL_EMPTY_MV = 3000, 2200


@dataclass(frozen=True, slots=True)
class TagReading:
    layout: str
    battery_pct: int | None
    event: int
    press_count: int | None


def read_tag(adv: Advertisement) -> TagReading | None:
    """The sensor fields of a known tag layout, or None for any other advertiser (a phone, an iBeacon)."""
    for layout in TAG_LAYOUTS:
        body = adv.manufacturer_data.get(layout.company)
        if body is None or not body.startswith(layout.magic) or len(body) < layout.min_len:
            continue
        b = layout.battery_offset
        if layout.battery_kind == "mv10_u16le":
            mv = int.from_bytes(body[b : b + 2], "little") * 10
            span = CELL_FULL_MV - CELL_EMPTY_MV
            battery: int | None = max(0, min(100, round((mv - CELL_EMPTY_MV) * 100 / span))) if mv else None
        else:
            battery = body[b] if body[b] <= 100 else None
        counter = None
        if layout.counter_offset is not None:
            counter = int.from_bytes(body[layout.counter_offset : layout.counter_offset + 2], "little")
        return TagReading(layout.name, battery, body[layout.event_offset], counter)
    return None


def encode_tag(layout_name: str, *, battery_pct: int = 100, event: int = 0, press_count: int = 0) -> tuple[int, bytes]:
    """(company id, manufacturer data) a tag of this layout would send; for the twins and tests."""
    layout = next(x for x in TAG_LAYOUTS if x.name == layout_name)
    body = bytearray(layout.magic.ljust(layout.min_len, b"\x00"))
    if layout.battery_kind == "mv10_u16le":
        mv = CELL_EMPTY_MV + (CELL_FULL_MV - CELL_EMPTY_MV) * battery_pct / 100
        body[layout.battery_offset : layout.battery_offset + 2] = round(mv / 10).to_bytes(2, "little")
    else:
        body[layout.battery_offset] = battery_pct
    body[layout.event_offset] = event & 0xFF
    if layout.counter_offset is not None:
        body[layout.counter_offset : layout.counter_offset + 2] = (press_count & 0xFFFF).to_bytes(2, "little")
    if layout.subtype is not None:  # real Ingics frames carry 15 bytes: sensor/reserved bytes and a subtype
        body += bytes(15 - len(body))
        body[11] = layout.subtype
    return layout.company, bytes(body)


class TagPresses:
    """Turns successive readings of each tag into alarms: one per press, one per fall (see the module doc)."""

    def __init__(self, *, max_tags: int = MAX_TAGS) -> None:
        self._max = max_tags
        self._last: OrderedDict[str, TagReading] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def alarms(self, device: str, reading: TagReading) -> frozenset[BandAlarm]:
        before = self._last.pop(device, None)
        self._last[device] = reading
        if len(self._last) > self._max:
            self._last.popitem(last=False)
        found: set[BandAlarm] = set()
        for bit, alarm in _EVENT_ALARMS:
            if reading.event & bit and (before is None or not before.event & bit):
                found.add(alarm)
        if reading.press_count is not None and before is not None and before.press_count is not None:
            if reading.press_count != before.press_count:
                found.add(BandAlarm.SOS)
            elif reading.event & EVENT_BUTTON:
                found.discard(BandAlarm.SOS)  # the counter says no new press: the bit is a held button
        return frozenset(found)
