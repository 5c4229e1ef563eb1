"""Which band belongs to which wearer: from [[wearer]] in the config and from the county (`wearers.set`).

Device ids are compared normalised: a BLE MAC in any spelling (`ac:23:3f:a0:00:01`, `AC-23-3F-A0-00-01`,
`AC233FA00001`) is the same band; other ids (the watch protocol's 10-digit ids) are compared as given,
trimmed. Wearer ids are pseudonymous ("W1"), never names.

A frame from a device nobody registered is counted and logged once per device (bounded), never alerted:
a village has its neighbours' bands, phones and headphones in radio range.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.i18n import N_

log = logging.getLogger(__name__)

_MAC_RE = re.compile(r"^[0-9A-F]{2}([:-]?[0-9A-F]{2}){5}\Z")  # \Z: "$" also matches before a final "\n"
_WEARER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
MAX_LOGGED_UNKNOWN = 1024  # distinct unknown devices logged by id; beyond that only counted


class RegistryError(ValueError):
    """A wearer list that cannot be used (from a wearers.set command)."""


def normalize_device(device: str) -> str:
    d = device.strip().upper()
    if _MAC_RE.match(d):
        return d.replace(":", "").replace("-", "")
    return device.strip()


@dataclass(frozen=True, slots=True)
class Wearer:
    id: str
    device: str  # normalised
    report_interval_s: float | None = None  # None: the [wearables] default
    fences: tuple[str, ...] = ()
    source: str = "config"  # "config" | "county"


class Registry:
    def __init__(self, configured: Iterable[Wearer] = ()) -> None:
        self._config = {w.id: w for w in configured}
        self._county: dict[str, Wearer] = {}
        self._by_device: dict[str, Wearer] = {}
        self._logged: set[str] = set()
        self.unknown_frames = 0
        self._rebuild()

    def set_county(self, wearers: Iterable[Wearer]) -> None:
        """Replace the county's list. The county's entry wins over the config's for the same wearer id."""
        self._county = {w.id: w for w in wearers}
        self._rebuild()

    def _rebuild(self) -> None:
        merged = {**self._config, **self._county}
        by_device: dict[str, Wearer] = {}
        # a device claimed by two wearers: the county's claim wins, then the later config entry
        for w in [*(w for w in merged.values() if w.source == "config"),
                  *(w for w in merged.values() if w.source == "county")]:
            old = by_device.get(w.device)
            if old is not None and old.id != w.id:
                log.warning("device %s is registered to %s and %s; using %s", w.device, old.id, w.id, w.id)
            by_device[w.device] = w
        self._by_device = by_device

    def lookup(self, device: str) -> Wearer | None:
        w = self._by_device.get(normalize_device(device))
        if w is None:
            self.unknown_frames += 1
            key = normalize_device(device)
            if key not in self._logged and len(self._logged) < MAX_LOGGED_UNKNOWN:
                self._logged.add(key)
                log.info("frames from unregistered device %s are ignored (logged once per device)", key)
        return w

    def get(self, wearer_id: str) -> Wearer | None:
        return {**self._config, **self._county}.get(wearer_id)

    def wearers(self) -> list[Wearer]:
        return list({**self._config, **self._county}.values())

    @property
    def unknown_devices(self) -> int:
        return len(self._logged)


def parse_wearers(data: Any) -> list[Wearer]:
    """The `data` of a `wearers.set` command: {"wearers": [{"id", "device", "report_interval_s"?, "fences"?}]}."""
    if not isinstance(data, dict) or not isinstance(data.get("wearers"), list):
        raise RegistryError(N_("data.wearers: expected a list of {id, device}"))
    out: list[Wearer] = []
    seen: set[str] = set()
    for i, item in enumerate(data["wearers"]):
        where = f"wearers[{i}]"
        if not isinstance(item, dict):
            raise RegistryError(N_("{where}: expected an object", where=where))
        unknown = set(item) - {"id", "device", "report_interval_s", "fences"}
        if unknown:
            raise RegistryError(N_("{where}: unknown key(s) {unknown}", where=where, unknown=sorted(unknown)))
        wid, device = item.get("id"), item.get("device")
        if not isinstance(wid, str) or not _WEARER_RE.match(wid):
            raise RegistryError(N_("{where}.id: expected [A-Za-z0-9_.-]{{1,64}}", where=where))
        if wid in seen:
            raise RegistryError(N_("{where}.id: duplicate wearer {wid!r}", where=where, wid=wid))
        seen.add(wid)
        if not isinstance(device, str) or not device.strip() or len(device) > 64:
            raise RegistryError(N_("{where}.device: expected a band id or MAC", where=where))
        interval = item.get("report_interval_s")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                     or interval <= 0):
            raise RegistryError(N_("{where}.report_interval_s: expected a number > 0", where=where))
        fences = item.get("fences", [])
        if not isinstance(fences, list) or not all(isinstance(f, str) for f in fences):
            raise RegistryError(N_("{where}.fences: expected a list of fence ids", where=where))
        out.append(Wearer(wid, normalize_device(device), None if interval is None else float(interval),
                          tuple(fences), "county"))
    return out
