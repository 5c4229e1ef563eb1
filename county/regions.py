"""The county's regions file: county -> townships (乡镇) -> villages (行政村) -> boxes (docs/county-server.md).

A TOML file (`[county] regions = "regions.toml"` in county.toml), read once and validated like the config:
unknown keys, duplicate ids and bad values are `RegionsError`, whose `str()` is one line naming the file,
the key and the problem. Example (county/regions.example.toml is a complete one)::

    [county]
    id = "menghai"
    name = "勐海县"

    [[township]]
    id = "menglou-town"
    name = "勐楼镇"

    [[township.village]]
    id = "menglou"
    name = "勐楼村"

    [[township.village.box]]
    id = "lhk-menglou-001"
    name = "勐楼村委会"
    groups = ["town-menglou"]
    lat = 21.95
    lon = 101.25

Township and village ids share one namespace (both are *scopes* a user can be limited to, and the county's
own id is the whole county); box ids are the boxes' `[box] id`. A box that reports but is not in the file
is "unregistered": it is kept and shown, with no village or township, and only county-wide users see it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.i18n import N_
from agent.protocol.topics import BOX_ID_RE
from agent.schema import SchemaError, build, read_toml

UNREGISTERED = "unregistered"
# box id -> the groups in its retained state (boxes.groups; None when it reported none)
Reported = Mapping[str, Iterable[str] | None] | None
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
MAX_NAME = 100


class RegionsError(Exception):
    """A regions file that cannot be used; `str()` is the one line an operator sees."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(N_("{file}: {key}: {problem}", file=self.file, key=key, problem=problem) if key
                         else N_("{file}: {problem}", file=self.file, problem=problem))


def _id(value: str) -> str:
    if not BOX_ID_RE.match(value):
        raise ValueError(N_("{value!r} is not [A-Za-z0-9_-]{{1,64}}", value=value))
    return value


def _name(value: str) -> str:
    if not value.strip() or len(value) > MAX_NAME or _BAD_NAME.search(value):
        raise ValueError(N_("a display name of 1..{max_name} printable characters, got {value!r}",
                            max_name=MAX_NAME, value=value[:MAX_NAME]))
    return value


def _groups(value: tuple[str, ...]) -> tuple[str, ...]:
    for g in value:
        _id(g)
    return value


def _lat(value: float) -> float:
    if not math.isfinite(value) or not -90 <= value <= 90:
        raise ValueError(N_("latitude must be -90..90, got {value}", value=value))
    return value


def _lon(value: float) -> float:
    if not math.isfinite(value) or not -180 <= value <= 180:
        raise ValueError(N_("longitude must be -180..180, got {value}", value=value))
    return value


def _coords(lat: float | None, lon: float | None) -> None:
    if (lat is None) != (lon is None):
        raise SchemaError("lon" if lon is None else "lat", N_("lat and lon go together"))


@dataclass(frozen=True, slots=True)
class BoxEntry:
    id: str = field(metadata={"check": _id})
    name: str | None = field(default=None, metadata={"check": _name})
    groups: tuple[str, ...] = field(default=(), metadata={"check": _groups})
    lat: float | None = field(default=None, metadata={"check": _lat})
    lon: float | None = field(default=None, metadata={"check": _lon})

    def __post_init__(self) -> None:
        _coords(self.lat, self.lon)


@dataclass(frozen=True, slots=True)
class VillageEntry:
    id: str = field(metadata={"check": _id})
    name: str = field(metadata={"check": _name})
    lat: float | None = field(default=None, metadata={"check": _lat})
    lon: float | None = field(default=None, metadata={"check": _lon})
    boxes: tuple[BoxEntry, ...] = field(default=(), metadata={"key": "box"})

    def __post_init__(self) -> None:
        _coords(self.lat, self.lon)


@dataclass(frozen=True, slots=True)
class TownshipEntry:
    id: str = field(metadata={"check": _id})
    name: str = field(metadata={"check": _name})
    lat: float | None = field(default=None, metadata={"check": _lat})
    lon: float | None = field(default=None, metadata={"check": _lon})
    villages: tuple[VillageEntry, ...] = field(default=(), metadata={"key": "village"})

    def __post_init__(self) -> None:
        _coords(self.lat, self.lon)


@dataclass(frozen=True, slots=True)
class CountyEntry:
    id: str = field(metadata={"check": _id})
    name: str = field(metadata={"check": _name})


@dataclass(frozen=True, slots=True)
class RegionsFile:
    county: CountyEntry
    townships: tuple[TownshipEntry, ...] = field(default=(), metadata={"key": "township"})


@dataclass(frozen=True, slots=True)
class Place:
    """Where a box is: its village and township (ids and Chinese names), or unregistered (all None)."""

    box: str
    name: str | None = None       # the file's name for the box (its id when the file gives none)
    village: str | None = None
    village_name: str | None = None
    township: str | None = None
    township_name: str | None = None
    groups: tuple[str, ...] = ()
    lat: float | None = None
    lon: float | None = None

    @property
    def registered(self) -> bool:
        return self.village is not None


@dataclass(frozen=True, slots=True)
class Region:
    """A scope: the county, a township or a village."""

    id: str
    name: str
    kind: str  # "county" | "township" | "village"
    parent: str | None
    boxes: frozenset[str]


class Regions:
    """The hierarchy with its lookups. `Regions.empty()` when no file is configured: every box unregistered."""

    def __init__(self, data: RegionsFile | None) -> None:
        self.data = data
        self.county_id = data.county.id if data else "county"
        self.county_name = data.county.name if data else ""
        self._places: dict[str, Place] = {}
        self._regions: dict[str, Region] = {}
        if data is None:
            self._regions[self.county_id] = Region(self.county_id, self.county_name, "county", None, frozenset())
            return
        for t in data.townships:
            t_boxes: set[str] = set()
            for v in t.villages:
                v_boxes = frozenset(b.id for b in v.boxes)
                t_boxes |= v_boxes
                self._regions[v.id] = Region(v.id, v.name, "village", t.id, v_boxes)
                for b in v.boxes:
                    self._places[b.id] = Place(box=b.id, name=b.name or b.id, village=v.id, village_name=v.name,
                                               township=t.id, township_name=t.name, groups=b.groups,
                                               lat=b.lat if b.lat is not None else v.lat,
                                               lon=b.lon if b.lon is not None else v.lon)
            self._regions[t.id] = Region(t.id, t.name, "township", self.county_id, frozenset(t_boxes))
        self._regions[self.county_id] = Region(self.county_id, self.county_name, "county", None,
                                               frozenset(self._places))

    @classmethod
    def empty(cls) -> Regions:
        return cls(None)

    # -- lookups
    def place(self, box: str) -> Place:
        """The box's village and township; an unregistered box gets a Place with no names (never an error)."""
        return self._places.get(box) or Place(box=box)

    def box(self, box: str) -> Place | None:
        """The registered box's Place, None for a box the file does not name."""
        return self._places.get(box)

    def registered(self) -> frozenset[str]:
        """Every box id the file names."""
        return frozenset(self._places)

    all_boxes = registered

    def region(self, scope: str) -> Region:
        """The county, a township or a village by id; KeyError for an unknown id."""
        return self._regions[scope]

    def has_scope(self, scope: str) -> bool:
        return scope in self._regions

    def scopes(self) -> list[Region]:
        return list(self._regions.values())

    def boxes_in(self, scope: str | None) -> frozenset[str]:
        """The registered box ids of a scope (None or the county id: every registered box)."""
        return self._regions[scope or self.county_id].boxes

    def in_scope(self, box: str, scope: str | None) -> bool:
        """Whether `box` is inside `scope`; None/the county id holds every box, unregistered ones too."""
        if scope is None or scope == self.county_id:
            return True
        region = self._regions.get(scope)
        return region is not None and box in region.boxes

    def region_within(self, region: str | None, scope: str | None) -> bool:
        """Whether region `region` (None = the whole county) lies inside `scope` (None = the whole county)."""
        if scope is None or scope == self.county_id:
            return True
        if region is None or region == self.county_id:
            return False
        while region is not None:
            if region == scope:
                return True
            found = self._regions.get(region)
            region = found.parent if found else None
        return False

    def group_members(self, name: str, reported: Reported = None) -> frozenset[str]:
        """Boxes that answer to group `name`: from this file, and from the groups boxes reported themselves."""
        members = {b for b, p in self._places.items() if name in p.groups}
        for box, groups in (reported or {}).items():
            if groups and name in groups:
                members.add(box)
        return frozenset(members)

    def resolve(self, targets: Iterable[str], reported: Reported = None) -> dict[str, frozenset[str]]:
        """Each target (`box:ID`, `group:NAME`) -> the box ids it reaches. `reported` maps box id -> the groups
        in its retained state (boxes.groups). `box:ID` always reaches ID, registered or not; a group nobody
        answers to maps to an empty set (the caller tells the user). ValueError for a malformed target."""
        out: dict[str, frozenset[str]] = {}
        for target in targets:
            kind, sep, name = target.partition(":")
            if not sep or kind not in ("box", "group") or not BOX_ID_RE.match(name):
                raise ValueError(N_("target {target!r} is not box:ID or group:NAME ([A-Za-z0-9_-]{{1,64}})",
                                    target=target))
            out[target] = frozenset((name,)) if kind == "box" else self.group_members(name, reported)
        return out

    def boxes_for(self, targets: Iterable[str], reported: Reported = None) -> frozenset[str]:
        """Every box the targets reach (the union of `resolve`)."""
        boxes: set[str] = set()
        for reached in self.resolve(targets, reported).values():
            boxes |= reached
        return frozenset(boxes)


def _check_ids(data: RegionsFile) -> None:
    scopes: dict[str, str] = {data.county.id: "county.id"}
    boxes: dict[str, str] = {}
    for ti, t in enumerate(data.townships):
        tkey = f"township[{ti}]"
        if t.id in scopes:
            raise SchemaError(f"{tkey}.id", N_("duplicate region id {id!r} (also {scopes})",
                                               id=t.id, scopes=scopes[t.id]))
        scopes[t.id] = f"{tkey}.id"
        for vi, v in enumerate(t.villages):
            vkey = f"{tkey}.village[{vi}]"
            if v.id in scopes:
                raise SchemaError(f"{vkey}.id", N_("duplicate region id {id!r} (also {scopes})",
                                                   id=v.id, scopes=scopes[v.id]))
            scopes[v.id] = f"{vkey}.id"
            for bi, b in enumerate(v.boxes):
                bkey = f"{vkey}.box[{bi}].id"
                if b.id in boxes:
                    raise SchemaError(bkey, N_("duplicate box id {id!r} (also {boxes})", id=b.id, boxes=boxes[b.id]))
                boxes[b.id] = bkey


def parse_regions(raw: dict[str, Any], source: Path | str = "<regions>") -> Regions:
    try:
        data = build(RegionsFile, raw)
        _check_ids(data)
    except SchemaError as exc:
        raise RegionsError(source, exc.key, exc.problem) from None
    return Regions(data)


def load_regions(path: Path | str | None) -> Regions:
    """Read and validate a regions file; None -> `Regions.empty()`."""
    if path is None:
        return Regions.empty()
    path = Path(path)
    try:
        raw = read_toml(path)
    except SchemaError as exc:
        raise RegionsError(path, exc.key, exc.problem) from None
    return parse_regions(raw, path)
