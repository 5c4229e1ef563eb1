"""From probe results to observations, and the cycle-wide decisions: is the box's own LAN down?

Pure: no I/O, no asyncio. The service feeds one cycle's results; `Fleet` returns the state changes
and the cameras to confirm at once.

How the box knows its LAN is down (and says `unknown`, not `offline`):
1. the kernel says so: no route towards the cameras, or no carrier on that interface
   (drivers/camera/link.py); or
2. with two or more cameras probed, every one failed at the network level in the same cycle
   (unreachable or timeout). One camera dying is that camera; all of them at once is the box's
   cable, switch or PoE supply, and the agent cannot see past it.
Such a cycle counts for no camera. After `offline_after` LAN-down cycles in a row every camera is
`unknown` with reason `lan_down`. With a single camera only rule 1 applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.cameras.state import AUTH_FAILED, Action, CameraHealth, Change, Kind, Observation
from agent.clock import Clock
from drivers.camera.base import ProbeOutcome, ProbeResult


def classify(result: ProbeResult, *, held_back: bool) -> Observation:
    """One RTSP probe result as an observation. `held_back`: we did not send the credential."""
    o = result.outcome
    if o is ProbeOutcome.OK:
        return Observation.good()
    if o.network_failure:
        return Observation(Kind.FAILED, o.value, result.detail)
    if o is ProbeOutcome.AUTH_REQUIRED:
        # alive and still asking; while held back that is the same 401 we already reported
        return Observation(Kind.BAD, AUTH_FAILED if held_back else "no_credentials", result.detail)
    return Observation(Kind.BAD, o.value, result.detail)


def lan_down(results: Mapping[str, ProbeResult], link_up: bool | None) -> bool:
    if link_up is False:
        return True
    return len(results) >= 2 and all(r.outcome.network_failure for r in results.values())


@dataclass(frozen=True, slots=True)
class CycleOutcome:
    changes: list[Change]
    confirm: list[str]  # cameras to probe again right now
    lan_down: bool


class Fleet:
    """Every camera's CameraHealth plus the LAN-down streak."""

    def __init__(self, ids: Iterable[str], clock: Clock, *, offline_after: int = 3, online_after: int = 2,
                 auth_holdoff_s: float = 3600.0, maintenance: Iterable[str] = ()) -> None:
        held = set(maintenance)
        self.clock = clock
        self.offline_after = offline_after
        self.cams: dict[str, CameraHealth] = {
            i: CameraHealth(i, clock, offline_after=offline_after, online_after=online_after,
                            auth_holdoff_s=auth_holdoff_s, maintenance=i in held)
            for i in ids
        }
        self.lan_down_cycles = 0

    def __getitem__(self, camera: str) -> CameraHealth:
        return self.cams[camera]

    def start(self, reason: str, since: float | None = None) -> list[Change]:
        """Announce every camera as unknown (agent start); `since` = when the agent stopped knowing."""
        out = []
        for cam in self.cams.values():
            cam.reason = ""  # so force_unknown reports it even though a fresh machine is already unknown
            change = cam.force_unknown(reason, since)
            if change is not None:
                out.append(change)
        return out

    def end_cycle(self, observations: Mapping[str, Observation], results: Mapping[str, ProbeResult],
                  link_up: bool | None) -> CycleOutcome:
        down = lan_down(results, link_up)
        changes: list[Change] = []
        confirm: list[str] = []
        if down:
            self.lan_down_cycles += 1
            if self.lan_down_cycles >= self.offline_after:
                for cam in self.cams.values():
                    if (change := cam.force_unknown("lan_down")) is not None:
                        changes.append(change)
            return CycleOutcome(changes, confirm, True)
        self.lan_down_cycles = 0
        for camera, obs in observations.items():
            change, action = self.cams[camera].observe(obs)
            if change is not None:
                changes.append(change)
            if action is Action.CONFIRM:
                confirm.append(camera)
        return CycleOutcome(changes, confirm, False)

    def confirmed(self, camera: str, obs: Observation) -> Change | None:
        change, _ = self.cams[camera].observe(obs)
        return change

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cam in self.cams.values():
            out[cam.state.value] = out.get(cam.state.value, 0) + 1
        return out
