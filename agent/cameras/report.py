"""The camera feature's uplink messages (contract section 4), built in one place.

- `camera` (event), on every state change: `camera`, `state`, `reason`, `since` (epoch ms), plus
  `previous`, `detail` (human, redacted) and, for offline, `failing_since` (first failed cycle).
- `camera_device` (event, an extension): `camera`, `change` (`rebooted` | `replaced` |
  `firmware_changed`) and the old/new values.
- `cameras` (telemetry), every `telemetry_s`: `from`/`to` (epoch ms) of the period, `summary`
  (cameras per current state, `total`), and per camera its current `state`, `reason`, `since`,
  `seconds` spent in each state over the period, and `clock_skew_s` / `latency_ms` when known.
  Time the agent did not observe (not running) is in `seconds.unknown`, so the county can compute a
  point-in-time online rate (summary) or a time-weighted one (sum of seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.cameras.state import CamState, Change


def ms(t: float) -> int:
    return round(t * 1000)


def camera_event(change: Change) -> dict[str, Any]:
    data: dict[str, Any] = {
        "camera": change.camera,
        "state": change.state.value,
        "reason": change.reason or None,
        "since": ms(change.since),
        "previous": change.previous.value,
    }
    if change.detail:
        data["detail"] = change.detail
    if change.failing_since is not None:
        data["failing_since"] = ms(change.failing_since)
    return data


def device_event(camera: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"camera": camera, **body}


def telemetry(period_from: float, period_to: float, cameras: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, int] = dict.fromkeys((s.value for s in CamState), 0)
    for c in cameras:
        summary[c["state"]] += 1
    summary["total"] = len(cameras)
    return {"from": ms(period_from), "to": ms(period_to), "summary": summary, "cameras": cameras}


def camera_entry(camera: str, state: CamState, reason: str, since: float, seconds: dict[str, float],
                 skew_s: float | None, latency_ms: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"camera": camera, "state": state.value, "reason": reason or None,
                             "since": ms(since), "seconds": seconds}
    if skew_s is not None:
        entry["clock_skew_s"] = round(skew_s, 1)
    if latency_ms is not None:
        entry["latency_ms"] = round(latency_ms, 1)
    return entry
