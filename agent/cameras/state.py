"""One camera's health as a pure state machine over an injected clock.

States: online, degraded(reason), offline, unknown, maintenance. What one probe cycle saw arrives as
an `Observation`:
- GOOD: the stream answers DESCRIBE with video (and the picture, when checked, is fine);
- BAD(reason): the camera answers but does not deliver usable video (auth_failed, not_found, black,
  frozen, no_video, protocol_error, no_frame, ...);
- FAILED(reason): no answer at the network level (unreachable, timeout);
- NEUTRAL: the cycle tells nothing about the camera (the box's LAN was down).

Rules (anti-flap, no false offline from a blip):
- offline after `offline_after` consecutive FAILED cycles *and* one immediate confirm probe that
  also fails (the machine asks for it with Action.CONFIRM);
- online after `online_after` consecutive GOOD cycles;
- degraded after `online_after` consecutive BAD cycles, except auth_failed which is immediate: the
  credential is then held back for `auth_holdoff_s` (cameras lock accounts after a few failures);
- unknown while the agent was not running or its LAN was down (set from outside: `force_unknown`).
Seconds spent in each state are accounted on the monotonic clock for the `cameras` telemetry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.clock import Clock


class CamState(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    UNKNOWN = "unknown"
    MAINTENANCE = "maintenance"


class Kind(StrEnum):
    GOOD = "good"
    BAD = "bad"
    FAILED = "failed"
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class Observation:
    kind: Kind
    reason: str = ""
    detail: str = ""  # human, redacted

    @classmethod
    def good(cls) -> Observation:
        return cls(Kind.GOOD)


class Action(StrEnum):
    NONE = "none"
    CONFIRM = "confirm"  # probe again now, before declaring offline


@dataclass(frozen=True, slots=True)
class Change:
    camera: str
    state: CamState
    reason: str
    since: float  # wall clock, epoch s
    previous: CamState
    detail: str = ""
    failing_since: float | None = None  # first failed cycle of the streak that led to offline


AUTH_FAILED = "auth_failed"


class CameraHealth:
    def __init__(self, camera: str, clock: Clock, *, offline_after: int = 3, online_after: int = 2,
                 auth_holdoff_s: float = 3600.0, maintenance: bool = False) -> None:
        self.camera = camera
        self.clock = clock
        self.offline_after = offline_after
        self.online_after = online_after
        self.auth_holdoff_s = auth_holdoff_s
        self.state = CamState.MAINTENANCE if maintenance else CamState.UNKNOWN
        self.reason = "maintenance" if maintenance else "agent_start"
        self.since = clock.time()
        self.good = 0
        self.bad = 0
        self.failed = 0
        self.failing_since: float | None = None
        self.awaiting_confirm = False
        self.auth_held_until: float | None = None  # monotonic
        self._entered = clock.monotonic()
        self._seconds: dict[CamState, float] = dict.fromkeys(CamState, 0.0)

    # ------------------------------------------------------------------ decisions
    def credentials_allowed(self) -> bool:
        return self.auth_held_until is None or self.clock.monotonic() >= self.auth_held_until

    def release_credentials(self) -> None:
        """The credential changed on disk: it may be tried again at once."""
        self.auth_held_until = None

    def observe(self, obs: Observation) -> tuple[Change | None, Action]:
        """Feed one cycle's observation; returns a state change (or None) and whether to confirm now."""
        if self.state is CamState.MAINTENANCE or obs.kind is Kind.NEUTRAL:
            return None, Action.NONE
        if obs.kind is Kind.GOOD:
            self.failed, self.bad, self.failing_since, self.awaiting_confirm = 0, 0, None, False
            self.good += 1
            if self.state is not CamState.ONLINE and self.good >= self.online_after:
                return self._move(CamState.ONLINE, ""), Action.NONE
            return None, Action.NONE
        self.good = 0
        if obs.kind is Kind.BAD:
            self.failed, self.failing_since, self.awaiting_confirm = 0, None, False
            self.bad += 1
            if obs.reason == AUTH_FAILED and self.auth_holdoff_s > 0 and self.credentials_allowed():
                self.auth_held_until = self.clock.monotonic() + self.auth_holdoff_s
            immediate = obs.reason == AUTH_FAILED
            if self.state is CamState.DEGRADED:
                if obs.reason != self.reason:
                    return self._move(CamState.DEGRADED, obs.reason, obs.detail), Action.NONE
                return None, Action.NONE
            if immediate or self.bad >= self.online_after:
                return self._move(CamState.DEGRADED, obs.reason, obs.detail), Action.NONE
            return None, Action.NONE
        # FAILED
        self.bad = 0
        if self.failed == 0:
            self.failing_since = self.clock.time()
        self.failed += 1
        if self.state is CamState.OFFLINE:
            return None, Action.NONE
        if self.awaiting_confirm:
            self.awaiting_confirm = False
            return self._move(CamState.OFFLINE, obs.reason, obs.detail), Action.NONE
        if self.failed >= self.offline_after:
            self.awaiting_confirm = True
            return None, Action.CONFIRM
        return None, Action.NONE

    def force_unknown(self, reason: str, since: float | None = None) -> Change | None:
        """The agent cannot tell (its LAN is down, it just started): unknown, counters reset."""
        self.good = self.bad = self.failed = 0
        self.failing_since, self.awaiting_confirm = None, False
        if self.state in (CamState.UNKNOWN, CamState.MAINTENANCE) and self.reason == reason:
            return None
        if self.state is CamState.MAINTENANCE:
            return None
        return self._move(CamState.UNKNOWN, reason, since=since)

    def set_maintenance(self, on: bool) -> Change | None:
        if on and self.state is not CamState.MAINTENANCE:
            return self._move(CamState.MAINTENANCE, "maintenance")
        if not on and self.state is CamState.MAINTENANCE:
            self.good = self.bad = self.failed = 0
            return self._move(CamState.UNKNOWN, "maintenance_ended")
        return None

    # ------------------------------------------------------------------ accounting
    def take_seconds(self) -> dict[str, float]:
        """Seconds in each state since the last call (monotonic), and start a new period."""
        now = self.clock.monotonic()
        self._seconds[self.state] += now - self._entered
        self._entered = now
        out = {s.value: round(v, 3) for s, v in self._seconds.items()}
        self._seconds = dict.fromkeys(CamState, 0.0)
        return out

    def add_seconds(self, state: CamState, seconds: float) -> None:
        """Account time the agent did not observe (e.g. while it was not running) to `state`."""
        self._seconds[state] += max(0.0, seconds)

    # ------------------------------------------------------------------ internals
    def _move(self, state: CamState, reason: str, detail: str = "", since: float | None = None) -> Change:
        now = self.clock.monotonic()
        self._seconds[self.state] += now - self._entered
        self._entered = now
        previous = self.state
        failing_since = self.failing_since if state is CamState.OFFLINE else None
        self.state, self.reason = state, reason
        self.since = self.clock.time() if since is None else since
        self.good = self.bad = 0
        return Change(self.camera, state, reason, self.since, previous, detail, failing_since)
