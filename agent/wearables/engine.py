"""The wearables logic as one object: codec events in, uplink messages out. No I/O at all.

Ties the registry (device -> wearer), the geofence tracker and the episode rules together, for every
gateway at once: a BLE tag heard by two gateways is one wearer with one alarm episode. The service
(service.py) feeds it events and gateway states, calls `tick()` about once a second and sends what
comes back. Geofence state changes are collected, not written: the service takes them with
`take_track_changes()` once the messages they caused are queued, and hands them to the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from agent.clock import Clock
from agent.protocol.envelope import MsgClass
from agent.wearables.episodes import EpisodeRules, Episodes, Out, pos_of
from agent.wearables.fences import Fence
from agent.wearables.geofence import GeofenceRules, GeofenceTracker, Track, Transition
from agent.wearables.registry import Registry, Wearer, normalize_device
from agent.wearables.settings import GatewayConfig, WearablesConfig, WearerConfig
from agent.wearables.store import TrackChange, TrackKey
from drivers.wristband.events import BandReport, GatewayHeartbeat, WristbandEvent

log = logging.getLogger(__name__)


def wearer_from_config(w: WearerConfig) -> Wearer:
    return Wearer(w.id, normalize_device(w.device), w.report_interval_s, tuple(w.fences), "config")


def episode_rules(cfg: WearablesConfig) -> EpisodeRules:
    return EpisodeRules(
        report_interval_s=cfg.report_interval_s, lost_contact_factor=cfg.lost_contact_factor,
        sos_fold_s=cfg.sos_fold_s, low_battery_pct=cfg.low_battery_pct, battery_rearm_pct=cfg.battery_rearm_pct,
        position_min_distance_m=cfg.position_min_distance_m, position_min_interval_s=cfg.position_min_interval_s,
        position_max_interval_s=cfg.position_max_interval_s)


class WearablesEngine:
    def __init__(self, cfg: WearablesConfig, gateways: Iterable[GatewayConfig], wearers: Iterable[WearerConfig],
                 clock: Clock) -> None:
        self._clock = clock
        self._track_changes: dict[TrackKey, Track | None] = {}  # not yet handed to the store
        self.registry = Registry(wearer_from_config(w) for w in wearers)
        self.geofences = GeofenceTracker(GeofenceRules(cfg.margin_m, cfg.exit_fixes, cfg.exit_s), clock)
        self.episodes = Episodes(episode_rules(cfg), clock)
        for g in gateways:
            self.episodes.add_gateway(g.id, g.silent_s)
        self._local_fences: dict[str, Fence] = {}
        self._county_fences: dict[str, Fence] = {}
        self._county_assign: dict[str, tuple[str, ...]] = {}
        self.episodes.set_wearers(self.registry.wearers())

    # --- configuration ------------------------------------------------------------------------------

    def take_track_changes(self) -> list[TrackChange]:
        """The geofence states changed (None: dropped) since the last call, for the store."""
        out, self._track_changes = list(self._track_changes.items()), {}
        return out

    def load_tracks(self, tracks: Iterable[Track]) -> None:
        self.geofences.load(tracks)

    def set_local_fences(self, fences: Mapping[str, Fence]) -> None:
        self._local_fences = dict(fences)
        self._apply_fences()

    def set_county_fences(self, fences: Mapping[str, Fence], assign: Mapping[str, tuple[str, ...]]) -> None:
        """geofence.set: replaces the county's fences and assignment (the config's local fences stay)."""
        self._county_fences = dict(fences)
        self._county_assign = dict(assign)
        self._apply_fences()

    def set_county_wearers(self, wearers: Iterable[Wearer]) -> None:
        """wearers.set: replaces the county's wearer list (config wearers stay unless the county redefines them)."""
        self.registry.set_county(wearers)
        self.episodes.set_wearers(self.registry.wearers())
        self._apply_fences()

    @property
    def local_fences(self) -> dict[str, Fence]:
        """The config's fences the county has not redefined."""
        return {k: v for k, v in self._local_fences.items() if k not in self._county_fences}

    @property
    def fences(self) -> dict[str, Fence]:
        return {**self._local_fences, **self._county_fences}

    def assignment(self) -> dict[str, tuple[str, ...]]:
        out = {w.id: w.fences for w in self.registry.wearers()}
        out.update(self._county_assign)
        return out

    def _apply_fences(self) -> None:
        fences = self.fences
        assign = self.assignment()
        for wearer, ids in assign.items():
            missing = [f for f in ids if f not in fences]
            if missing:
                log.warning("wearer %s is assigned unknown fence(s) %s; ignoring them", wearer, missing)
        for key in self.geofences.set_fences(fences, assign):
            self._track_changes[key] = None

    # --- inputs -------------------------------------------------------------------------------------

    def on_event(self, gateway: str, event: WristbandEvent) -> list[Out]:
        out = self.episodes.on_traffic(gateway)
        if isinstance(event, GatewayHeartbeat) or not isinstance(event, BandReport):
            return out  # gateway heartbeats and the gateway's own position only prove it is alive
        wearer = self.registry.lookup(event.device)
        if wearer is None:
            return out
        out += self.episodes.on_report(wearer, gateway, event)
        if event.fix is not None and event.fix.usable:
            out += self._geofence(wearer, self.geofences.update(wearer.id, event.fix))
        return out

    def on_gateway_state(self, gateway: str, up: bool, reason: str) -> list[Out]:
        return self.episodes.on_gateway_state(gateway, up, reason)

    def tick(self) -> list[Out]:
        return self.episodes.tick()

    def _geofence(self, wearer: Wearer, transitions: list[Transition]) -> list[Out]:
        if not transitions:
            return []
        for t in transitions:  # written by the service after the messages below are queued
            self._track_changes[(t.track.wearer, t.track.fence)] = t.track
        ts_ms = int(self._clock.time() * 1000)
        out = []
        fences = self.fences
        for t in transitions:
            if not t.send:
                log.info("geofence %s for %s outside its schedule: %s recorded, not sent", t.track.fence,
                         wearer.id, t.kind)
                continue
            fence = fences.get(t.track.fence)
            data: dict[str, Any] = {"wearer": wearer.id, "device": wearer.device, "fence": t.track.fence,
                                    "pos": pos_of(t.fix, self._clock.time())}
            if fence is not None:
                data["fence_name"] = fence.name
                data["distance_m"] = round(fence.signed_distance_m(t.fix.lat, t.fix.lon), 1)
            if t.kind == "exit":
                out.append(Out(MsgClass.ALARM, "geofence_exit", data, ts_ms))
            elif t.kind == "enter":
                out.append(Out(MsgClass.EVENT, "geofence_enter", data, ts_ms))
            else:
                out.append(Out(MsgClass.EVENT, "geofence_state", {**data, "state": t.track.state.value}, ts_ms))
        return out
