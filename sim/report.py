"""After a run: the timeline (JSON lines), the canonical timeline seeds are compared on, expectations, summary.

The timeline file holds everything with the times it happened (scenario seconds, measured). The
*canonical* timeline is what "the same seed gives the same run" means, and holds no wall-clock field:

- the scenario's actions, in order, with their scheduled `t_s` (never the measured one);
- for every subject (a wearer, a camera, a broadcast, the box's gateway), the ordered list of the alarms,
  events and receipts the county received about it, each as (class, kind, state/fence), de-duplicated
  by envelope id and ordered by the box's `seq`.

Left out on purpose: `ts`, `seq` and `id` values (they carry wall time and restart history), telemetry
(positions and heartbeats are periodic samples: how many fall inside a run depends on the machine's
speed), and the relative order of messages about *different* subjects (two independent things that
happen in the same second may reach the outbox in either order on a busy machine).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.countyview import Seen
from sim.scenario import Expect, Scenario

SUBJECT_KEYS = ("wearer", "camera", "cmd", "gateway")


def subject(seen: Seen) -> str:
    data = seen.envelope.get("data") or {}
    for key in SUBJECT_KEYS:
        if isinstance(data.get(key), str):
            return f"{key}:{data[key]}"
    return f"box:{seen.box}"


def fact(seen: Seen) -> tuple[str, ...]:
    data = seen.envelope.get("data") or {}
    extra = [str(data[k]) for k in ("state", "fence") if isinstance(data.get(k), str)]
    return (seen.cls, seen.kind, *extra)


def canonical(scenario: Scenario, seen: list[Seen]) -> dict[str, Any]:
    actions = [[a.t_s, a.describe()] for a in scenario.actions]
    per_subject: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for s in seen:
        if s.cls in ("state", "telemetry") or s.duplicate:
            continue
        per_subject.setdefault(subject(s), []).append((int(s.envelope.get("seq", 0)), fact(s)))
    county = {k: [list(f) for _, f in sorted(v)] for k, v in sorted(per_subject.items())}
    return {"actions": actions, "county": county}


def timeline_lines(actions_done: list[dict[str, Any]], seen: list[Seen], box_events: list[dict[str, Any]]) -> list[str]:
    rows: list[dict[str, Any]] = list(actions_done) + list(box_events)
    for s in seen:
        row: dict[str, Any] = {"t": round(s.t_s, 3), "src": "county", "box": s.box, "class": s.cls, "kind": s.kind}
        if s.cls == "state":
            row["state"] = s.envelope.get("state")
        else:
            row.update(id=s.envelope.get("id"), seq=s.envelope.get("seq"), data=s.envelope.get("data"),
                       duplicate=s.duplicate)
        rows.append(row)
    rows.sort(key=lambda r: r["t"])
    return [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]


@dataclass(frozen=True, slots=True)
class Outcome:
    expect: Expect
    ok: bool
    got: str


def _matches(e: Expect, s: Seen) -> bool:
    if s.kind != e.kind or s.cls == "state" or s.duplicate:
        return False
    data = s.envelope.get("data") or {}
    return all(getattr(e, k) is None or data.get(k) == getattr(e, k)
               for k in ("wearer", "camera", "state", "cmd", "reason"))


def check(scenario: Scenario, seen: list[Seen], *, relay_clicks: list[tuple[float, str]],
          mqtt_version: str | None, loss: LossReport | None) -> list[Outcome]:
    out: list[Outcome] = []
    for e in scenario.expects:
        if e.kind == "no_loss":
            ok = loss is not None and loss.ok
            out.append(Outcome(e, ok, loss.describe() if loss is not None else "not measured"))
            continue
        if e.kind == "link_fallback_311":
            out.append(Outcome(e, mqtt_version == "3.1.1", f"agent spoke MQTT {mqtt_version}"))
            continue
        if e.kind in ("relay_on", "relay_off"):
            times = [t for t, state in relay_clicks if state == e.kind.removeprefix("relay_")]
        else:
            times = [s.t_s for s in seen if _matches(e, s)]
        n = sum(1 for t in times if e.by_s is None or t <= e.by_s)
        ok = (e.count is None or n == e.count) and (e.min_count is None or n >= e.min_count)
        when = ", ".join(f"t={t:.0f}s" for t in times[:6]) + (" ..." if len(times) > 6 else "")
        out.append(Outcome(e, ok, f"{n} in time" + (f" ({when})" if times else "")))
    return out


@dataclass(frozen=True, slots=True)
class LossReport:
    """Every seq the box assigned (1..last_seq, from its outbox) reached the county, and the backlog is empty."""

    last_seq: int | None
    backlog: int | None
    missing: tuple[int, ...]
    duplicates: int

    @property
    def ok(self) -> bool:
        return self.last_seq is not None and self.backlog == 0 and not self.missing

    def describe(self) -> str:
        miss = f"{len(self.missing)} missing (first {list(self.missing[:5])})" if self.missing else "none missing"
        return f"seq 1..{self.last_seq}: {miss}; backlog {self.backlog}; {self.duplicates} duplicate(s) de-duplicated"


def loss_report(box: str, seen: list[Seen], last_seq: int | None, backlog: int | None) -> LossReport:
    seqs = {int(s.envelope["seq"]) for s in seen if s.box == box and s.cls != "state" and "seq" in s.envelope}
    missing = tuple(q for q in range(1, (last_seq or 0) + 1) if q not in seqs)
    dups = sum(1 for s in seen if s.box == box and s.duplicate)
    return LossReport(last_seq, backlog, missing, dups)


def summary(scenario: Scenario, seen: list[Seen], outcomes: list[Outcome], *, duration_s: float, speed: float,
            wall_s: float,
            relay_clicks: list[tuple[float, str]], agent_runs: int, mqtt_version: str | None,
            loss: LossReport | None, max_backlog: int, broker: str) -> list[str]:
    unique = [s for s in seen if s.cls != "state" and not s.duplicate]
    by_class = Counter(s.cls for s in unique)
    lines = [
        f"scenario {scenario.scenario.name}: {duration_s:g} s at x{speed:g} in {wall_s:.0f} s wall "
        f"(seed {scenario.scenario.seed}, broker {broker}, agent MQTT {mqtt_version}, {agent_runs} agent run(s))",
        "county received: " + ", ".join(f"{n} {c}" for c, n in sorted(by_class.items()))
        + f" ({sum(1 for s in seen if s.duplicate)} duplicate(s) by id)",
    ]
    alarms = [s for s in unique if s.cls == "alarm"]
    if alarms:
        lines.append("alarms: " + "; ".join(f"t={s.t_s:.0f}s {s.kind} {subject(s)}" for s in alarms[:12]))
    cams = [s for s in unique if s.kind == "camera"]
    if cams:
        lines.append("cameras: " + "; ".join(f"t={s.t_s:.0f}s {s.envelope['data'].get('camera')} "
                                            f"{s.envelope['data'].get('state')}" for s in cams[:12]))
    receipts = [s for s in unique if s.cls == "receipt"]
    if receipts:
        lines.append("receipts: " + "; ".join(f"{s.envelope['data'].get('cmd')}={s.envelope['data'].get('state')}"
                                             for s in receipts[:16]))
    clicks = " ".join(f"{state}@{t:.0f}s" for t, state in relay_clicks)
    lines.append(f"relay: {len(relay_clicks)} click(s) {clicks}".rstrip())
    lines.append(f"backlog: max {max_backlog} queued in the box; " + (loss.describe() if loss else "not measured"))
    for o in outcomes:
        lines.append(f"{'PASS' if o.ok else 'FAIL'} expect {o.expect.describe()}: {o.got}")
    return lines


def write_timeline(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
