"""Per-wearer geofence state: exit only when really out, enter at once, no false alarms. Pure, clock injected.

For each (wearer, fence) the state is UNKNOWN, INSIDE or OUTSIDE. Only usable fixes (a valid satellite
fix, not 0,0; see drivers.wristband.events.Fix.usable) are looked at; no-fix, cell-tower and Wi-Fi
positions never change anything, they are hundreds of metres wide.

- exit: outside the fence by at least max(margin_m, the fix's reported accuracy) for `exit_fixes`
  consecutive usable fixes spanning at least `exit_s` seconds. A fix inside, or outside by less than the
  margin, starts the count again. GPS jitter at the fence line therefore never raises an exit.
- enter: immediate, on the first usable fix inside.
- a fence new to a wearer (just assigned, or its shape changed) starts UNKNOWN: the first decision
  (inside at once, outside by the exit rule) is reported once as a `state` transition, not as an enter.
- a schedule gates notification, not state: an exit while the fence's schedule is inactive is recorded
  and not sent; if the wearer is still out when the window opens, the exit is sent then. An enter is
  sent only when the county was told about the exit (`notified`), so the county's picture stays right.

The caller persists each transition's `track` (store.py) so state survives a restart; the pending exit
count is deliberately not persisted: after a restart the count starts again (never a false exit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from agent.clock import Clock
from agent.wearables.fences import INSIDE, OUTSIDE, Fence
from drivers.wristband.events import Fix


class FenceState(StrEnum):
    UNKNOWN = "unknown"
    INSIDE = "inside"
    OUTSIDE = "outside"


@dataclass(frozen=True, slots=True)
class GeofenceRules:
    margin_m: float = 25.0
    exit_fixes: int = 3
    exit_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Track:
    """What is persisted per (wearer, fence)."""

    wearer: str
    fence: str
    fingerprint: str
    state: FenceState
    notified: bool  # the county knows the current state
    since_ts: float  # wall clock of the last state change


@dataclass(frozen=True, slots=True)
class Transition:
    kind: str  # "exit" | "enter" | "state"
    track: Track  # the new persisted state
    fix: Fix
    send: bool  # False when a schedule gates it (the state changed all the same)


@dataclass(slots=True)
class _Pending:
    count: int = 0
    since: float = 0.0  # monotonic time of the first fix of the run


class GeofenceTracker:
    def __init__(self, rules: GeofenceRules, clock: Clock) -> None:
        self._rules = rules
        self._clock = clock
        self._fences: dict[str, Fence] = {}
        self._assign: dict[str, tuple[Fence, ...]] = {}
        self._tracks: dict[tuple[str, str], Track] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}

    # --- configuration --------------------------------------------------------------------------

    def load(self, tracks: Iterable[Track]) -> None:
        """Restore persisted state (before set_fences, which then drops what no longer applies)."""
        for t in tracks:
            self._tracks[(t.wearer, t.fence)] = t

    def set_fences(self, fences: Mapping[str, Fence], assign: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
        """Replace fences and assignment. Returns the (wearer, fence) tracks dropped, for the store to delete.

        A track survives only when the wearer still has that fence with the same shape (fingerprint).
        """
        self._fences = dict(fences)
        self._assign = {w: tuple(self._fences[f] for f in ids if f in self._fences) for w, ids in assign.items()}
        dropped = []
        for key, t in list(self._tracks.items()):
            fence = self._fences.get(t.fence)
            keep = fence is not None and fence.fingerprint == t.fingerprint and any(
                f.id == t.fence for f in self._assign.get(t.wearer, ()))
            if not keep:
                del self._tracks[key]
                self._pending.pop(key, None)
                dropped.append(key)
        return dropped

    def fences_of(self, wearer: str) -> tuple[Fence, ...]:
        return self._assign.get(wearer, ())

    def state(self, wearer: str, fence: str) -> FenceState:
        t = self._tracks.get((wearer, fence))
        return t.state if t else FenceState.UNKNOWN

    def tracks(self) -> list[Track]:
        return list(self._tracks.values())

    # --- the decision -----------------------------------------------------------------------------

    def update(self, wearer: str, fix: Fix) -> list[Transition]:
        fences = self._assign.get(wearer)
        if not fences or not fix.usable:
            return []
        rules = self._rules
        margin = rules.margin_m if fix.acc_m is None else max(rules.margin_m, fix.acc_m)
        now = self._clock.monotonic()
        out: list[Transition] = []
        for fence in fences:
            where = fence.classify(fix.lat, fix.lon, margin)
            key = (wearer, fence.id)
            track = self._tracks.get(key)
            if where == INSIDE:
                self._pending.pop(key, None)
                if track is not None and track.state is FenceState.INSIDE:
                    continue  # the common case: nothing to do
                if track is None or track.state is FenceState.UNKNOWN:
                    out.append(self._move(wearer, fence, FenceState.INSIDE, "state", fix, True))
                else:  # OUTSIDE -> INSIDE: tell the county only if it was told about the exit
                    out.append(self._move(wearer, fence, FenceState.INSIDE, "enter", fix, track.notified,
                                          notified=True))
            elif where == OUTSIDE:
                if track is not None and track.state is FenceState.OUTSIDE:
                    if not track.notified and self._active(fence):  # the window opened while out
                        t = replace(track, notified=True)
                        self._tracks[key] = t
                        out.append(Transition("exit", t, fix, True))
                    continue
                p = self._pending.get(key)
                if p is None:
                    p = self._pending[key] = _Pending(0, now)
                p.count += 1
                if p.count >= rules.exit_fixes and now - p.since >= rules.exit_s:
                    del self._pending[key]
                    if track is None or track.state is FenceState.UNKNOWN:
                        out.append(self._move(wearer, fence, FenceState.OUTSIDE, "state", fix, True))
                    else:
                        active = self._active(fence)
                        out.append(self._move(wearer, fence, FenceState.OUTSIDE, "exit", fix, active))
            else:  # outside, but not by the margin: not evidence of an exit, and breaks a run
                self._pending.pop(key, None)
        return out

    def _active(self, fence: Fence) -> bool:
        return fence.schedule is None or fence.schedule.active(self._clock.time())

    def _move(self, wearer: str, fence: Fence, state: FenceState, kind: str, fix: Fix, send: bool,
              *, notified: bool | None = None) -> Transition:
        t = Track(wearer, fence.id, fence.fingerprint, state, send if notified is None else notified,
                  self._clock.time())
        self._tracks[(wearer, fence.id)] = t
        return Transition(kind, t, fix, send)
