"""The broadcast engine: pure decisions over time. No I/O, no clock reads, no asyncio.

The service feeds it events (`add`, `cancel`, `ended`) and asks it what to do now (`step(now, mono)`)
and when to ask again (`next_wake`). Every call returns a list of effects, in order, for the service to
carry out: `Notify` (a receipt), `Start` (play an item), `Stop` (cut the playing item short). The engine
updates its own state at once (a Stop is final for the engine), and names the items it changed in
`take_dirty()` so the service can persist exactly those.

Rules (docs/broadcast.md has the reasoning):
- A one-shot item's window is [start, end); `start` null = on arrival; `end` null = start + late_window_s.
  A missed start inside the window plays late; past the window it is `expired` (`preempted` when an
  emergency had cut it off and it could not be resumed in time).
- A recurring item (`repeat`) has one window per occurrence, [at, at + window_s), clipped by `end`;
  a missed occurrence is reported `expired` (once, with the count) and the series goes on.
- Order among due items: class (emergency, drill, daily), then lower level, then arrival (FIFO).
  Only an emergency preempts: any non-emergency, or an emergency of a less severe (higher) level.
  The preempted item goes back to the queue and is played again from the start if still in its window.
- Quiet hours hold back daily and drill, never emergency; the first hold of each occurrence is reported
  as a `scheduled` receipt with reason `quiet_hours` and `until`.
- Before the wall clock is synchronised (earlier than 2024, or behind `time_floor`, the newest signed
  county time the service has seen, by more than FLOOR_SKEW_S) nothing with a time plays and nothing
  expires; only emergencies with start null play (the only thing that needs no clock).
- A play that runs past max_play_s is stopped (`failed`, reason `max_play_s`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.broadcast.items import Item, Klass, QuietHours
from agent.broadcast.settings import BroadcastConfig

SYNC_EPOCH = 1_704_067_200.0  # 2024-01-01T00:00:00Z: a wall clock before this has not been set
FLOOR_SKEW_S = 120.0  # the command router's skew: a clock this far behind signed county time is wrong


@dataclass(frozen=True, slots=True)
class Notify:
    cmd: str
    state: str
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Start:
    token: int  # names this play; `ended` for an older token is ignored
    item: Item
    occurrence: float | None  # the occurrence being played (recurring items)
    volume: int
    drill: bool
    resumed: bool  # played again after an emergency preempted it
    late_s: float | None  # how far after its start it begins (None when the clock is not synced)


@dataclass(frozen=True, slots=True)
class Stop:
    token: int
    item_id: str
    reason: str  # cancelled | preempted | max_play_s


Effect = Notify | Start | Stop


@dataclass(slots=True)
class Playing:
    token: int
    item_id: str
    occurrence: float | None
    started_mono: float


@dataclass(frozen=True, slots=True)
class Rules:
    quiet: QuietHours | None
    default_volume: int = 70
    max_volume: int = 80
    emergency_volume: int = 100
    max_play_s: float = 900.0
    late_window_s: float = 600.0

    @classmethod
    def from_config(cls, c: BroadcastConfig) -> Rules:
        quiet = QuietHours(c.quiet_hours[0], c.quiet_hours[1], c.timezone) if c.quiet_hours else None
        return cls(quiet, c.default_volume, c.max_volume, c.emergency_volume, c.max_play_s, c.late_window_s)

    def volume_for(self, item: Item) -> int:
        if item.cls is Klass.EMERGENCY:
            return self.emergency_volume
        want = self.default_volume if item.volume is None else item.volume
        capped = min(want, self.max_volume)
        if item.cls is Klass.DRILL:
            capped = min(capped, self.emergency_volume - 1)  # a drill must never sound like the real thing
        return max(0, capped)


class Engine:
    def __init__(self, rules: Rules, items: Iterable[Item] = ()) -> None:
        self.rules = rules
        self.items: dict[str, Item] = {i.id: i for i in items}
        self.playing: Playing | None = None
        self._token = 0
        self._dirty: set[str] = set()
        self.time_floor = 0.0  # newest signed county time seen (a command's iat); the service keeps it
        self.next_seq = max((i.seq for i in self.items.values()), default=0) + 1

    # -- events --------------------------------------------------------------------------------------
    def add(self, item: Item, now: float, mono: float) -> list[Effect]:
        if item.id in self.items:
            return []  # the same command twice (the router dedupes; a restart may not): keep the first
        item.seq, self.next_seq = self.next_seq, self.next_seq + 1
        if item.repeat is not None and math.isinf(item.done_until):
            # an occurrence already inside its window when the command arrives still plays (late)
            item.done_until = item.received - self._occ_window(item)
        self.items[item.id] = item
        self._dirty.add(item.id)
        effects = self.step(now, mono)
        told = any((e.item.id if isinstance(e, Start) else getattr(e, "cmd", None)) == item.id for e in effects)
        if not told and item.id in self.items:
            window = self.window(item) if self.synced(now) else None
            at = window[0] if window else item.start
            effects.insert(0, Notify(item.id, "scheduled", extra={"at": at}))
        return effects

    def cancel(self, cmd_id: str, target: str | None) -> list[Effect]:
        """Cancel broadcast `target` (None = all): stop it if playing, drop it if queued."""
        ids = sorted(self.items, key=lambda i: self.items[i].order()) if target is None else (
            [target] if target in self.items else [])
        effects: list[Effect] = []
        for item_id in ids:
            if self.playing is not None and self.playing.item_id == item_id:
                effects.append(Stop(self.playing.token, item_id, "cancelled"))
                self.playing = None
            effects.append(Notify(item_id, "cancelled", extra={"by": cmd_id}))
            self._remove(item_id)
        if ids or target is None:
            effects.append(Notify(cmd_id, "applied", extra={"cancelled": ids}))
        else:
            effects.append(Notify(cmd_id, "failed", "unknown_broadcast", {"broadcast": target}))
        return effects

    def ended(self, token: int, ok: bool, reason: str | None, extra: dict[str, Any]) -> list[Effect]:
        """The play `token` came to its end by itself (finished or failed)."""
        if self.playing is None or self.playing.token != token:
            return []  # already stopped by the engine (cancel, preemption, safety stop)
        playing, self.playing = self.playing, None
        item = self.items[playing.item_id]
        extra = dict(extra)
        if playing.occurrence is not None:
            extra["occurrence"] = playing.occurrence
        effects: list[Effect] = [Notify(item.id, "finished" if ok else "failed", reason, extra)]
        self._conclude(item, playing.occurrence)
        return effects

    # -- decisions -----------------------------------------------------------------------------------
    def step(self, now: float, mono: float) -> list[Effect]:
        effects: list[Effect] = []
        synced = self.synced(now)
        if self.playing is not None and mono - self.playing.started_mono >= self.rules.max_play_s:
            p, self.playing = self.playing, None
            effects += [Stop(p.token, p.item_id, "max_play_s"),
                        Notify(p.item_id, "failed", "max_play_s", {"max_play_s": self.rules.max_play_s})]
            self._conclude(self.items[p.item_id], p.occurrence)
        best: tuple[Item, float | None, float | None] | None = None
        for item in sorted(self.items.values(), key=Item.order):
            if self.playing is not None and item.id == self.playing.item_id:
                continue
            if not synced:
                if best is None and item.cls is Klass.EMERGENCY and item.start is None and item.repeat is None:
                    best = (item, None, None)
                continue
            if item.received < SYNC_EPOCH:
                item.received = now  # arrived before the clock was set: its "now" is the first real time
                self._dirty.add(item.id)
            window = self.window(item)
            if window is None:
                self._remove(item.id)  # a series with no occurrences left
                continue
            start, end = window
            if now >= end:
                effects += self._expire(item, start, now)
                continue
            if now < start:
                continue
            if item.cls is not Klass.EMERGENCY and self.rules.quiet is not None:
                quiet_end = self.rules.quiet.until(now)
                if quiet_end is not None:
                    if item.held != start:
                        item.held = start
                        self._dirty.add(item.id)
                        effects.append(Notify(item.id, "scheduled", "quiet_hours",
                                              {"until": quiet_end, **self._occ(item, start)}))
                    continue
            if best is None:
                best = (item, start if item.repeat else None, now - start)
        if best is not None:
            item, occ, late = best
            if self.playing is None:
                effects.append(self._start(item, occ, late, mono))
            elif self._outranks(item):
                p, self.playing = self.playing, None
                victim = self.items[p.item_id]
                victim.preempted = True
                self._dirty.add(victim.id)
                effects += [Stop(p.token, p.item_id, "preempted"),
                            Notify(p.item_id, "scheduled", "preempted", {"by": item.id})]
                effects.append(self._start(item, occ, late, mono))
        return effects

    def next_wake(self, now: float, mono: float) -> float | None:
        """Seconds until `step` may have something new to do (None: only an event can change things)."""
        waits: list[float] = []
        if self.playing is not None:
            waits.append(self.playing.started_mono + self.rules.max_play_s - mono)
        if self.synced(now):
            for item in self.items.values():
                if self.playing is not None and item.id == self.playing.item_id:
                    continue
                window = self.window(item)
                if window is None:
                    waits.append(0.0)
                    continue
                start, end = window
                waits.append(start - now if now < start else end - now)
                if now >= start and item.held is not None and self.rules.quiet is not None:
                    quiet_end = self.rules.quiet.until(now)
                    waits.append(0.0 if quiet_end is None else quiet_end - now)
        return max(0.0, min(waits)) if waits else None

    def synced(self, now: float) -> bool:
        """Can the wall clock `now` be believed for schedules? Set since boot, and not behind signed time."""
        return now >= SYNC_EPOCH and now >= self.time_floor - FLOOR_SKEW_S

    def window(self, item: Item) -> tuple[float, float] | None:
        """The current [start, end) of an item: its own, or its next occurrence's. None: no more."""
        if item.repeat is None:
            start = item.start if item.start is not None else item.received
            return start, item.end if item.end is not None else start + self.rules.late_window_s
        after = item.done_until if item.start is None else max(item.done_until, item.start - 1e-3)
        occ = item.repeat.next_after(after)
        if occ is None or (item.end is not None and occ >= item.end):
            return None
        end = occ + self._occ_window(item)
        return occ, min(end, item.end) if item.end is not None else end

    def take_dirty(self) -> set[str]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    # -- internals -----------------------------------------------------------------------------------
    def _occ_window(self, item: Item) -> float:
        assert item.repeat is not None
        return item.repeat.window_s if item.repeat.window_s is not None else self.rules.late_window_s

    @staticmethod
    def _occ(item: Item, start: float) -> dict[str, Any]:
        return {"occurrence": start} if item.repeat is not None else {}

    def _outranks(self, item: Item) -> bool:
        assert self.playing is not None
        current = self.items[self.playing.item_id]
        if item.cls is not Klass.EMERGENCY:
            return False
        return current.cls is not Klass.EMERGENCY or item.level < current.level

    def _start(self, item: Item, occ: float | None, late: float | None, mono: float) -> Start:
        self._token += 1
        self.playing = Playing(self._token, item.id, occ, mono)
        return Start(self._token, item, occ, self.rules.volume_for(item), item.cls is Klass.DRILL,
                     item.preempted, late)

    def _expire(self, item: Item, start: float, now: float) -> list[Effect]:
        state = "preempted" if item.preempted else "expired"
        if item.repeat is None:
            self._remove(item.id)
            return [Notify(item.id, state, "window_passed", {"start": start})]
        missed, window = 0, self.window(item)
        while window is not None and now >= window[1]:
            missed += 1
            item.done_until = window[0]
            window = self.window(item)
        item.preempted, item.held = False, None
        self._dirty.add(item.id)
        return [Notify(item.id, state, "window_passed", {"occurrence": start, "missed": missed})]

    def _conclude(self, item: Item, occ: float | None) -> None:
        """After a play ended (or was stopped for good): one-shot items go, recurring ones move on."""
        if item.repeat is None or occ is None:
            self._remove(item.id)
            return
        item.done_until = occ
        item.preempted, item.held = False, None
        self._dirty.add(item.id)
        if self.window(item) is None:
            self._remove(item.id)

    def _remove(self, item_id: str) -> None:
        self.items.pop(item_id, None)
        self._dirty.add(item_id)
