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
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import words
from agent.i18n import N_, _
from sim.countyview import Seen
from sim.dashboard import Names, clock
from sim.scenario import Action, Expect, Scenario

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
            out.append(Outcome(e, ok, loss.describe() if loss is not None else _("not measured")))
            continue
        if e.kind == "link_fallback_311":
            out.append(Outcome(e, mqtt_version == "3.1.1",
                               _("the agent spoke MQTT {version}").format(version=mqtt_version)))
            continue
        if e.kind in ("relay_on", "relay_off"):
            times = [t for t, state in relay_clicks if state == e.kind.removeprefix("relay_")]
        else:
            times = [s.t_s for s in seen if _matches(e, s)]
        n = sum(1 for t in times if e.by_s is None or t <= e.by_s)
        ok = (e.count is None or n == e.count) and (e.min_count is None or n >= e.min_count)
        when = ", ".join(clock(t) for t in times[:6]) + (" ..." if len(times) > 6 else "")
        got = _("{n} in time").format(n=n)
        out.append(Outcome(e, ok, got + (f" ({when})" if times else "")))
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
        if self.missing:
            miss = _("{n} missing (first {first})").format(n=len(self.missing), first=list(self.missing[:5]))
        else:
            miss = _("none missing")
        return _("seq 1..{last}: {missing}; backlog {backlog}; {dups} duplicate(s) de-duplicated").format(
            last=self.last_seq, missing=miss, backlog=self.backlog, dups=self.duplicates)


def loss_report(box: str, seen: list[Seen], last_seq: int | None, backlog: int | None) -> LossReport:
    seqs = {int(s.envelope["seq"]) for s in seen if s.box == box and s.cls != "state" and "seq" in s.envelope}
    missing = tuple(q for q in range(1, (last_seq or 0) + 1) if q not in seqs)
    dups = sum(1 for s in seen if s.box == box and s.duplicate)
    return LossReport(last_seq, backlog, missing, dups)


def names_for(scenario: Scenario) -> Names:
    """The scenario's names: cameras, wearers' display labels, broadcast titles, the box and its gateway."""
    return Names(
        cameras={c.id: c.name for c in scenario.cameras if c.name},
        wearers={w.id: w.label for w in scenario.wearers if w.label},
        broadcasts={a.id: a.title for a in scenario.actions if a.do == "broadcast" and a.id and a.title},
        box=scenario.box.name, gateway=scenario.gateway.name)


CAMERA_MODES = {
    "healthy": N_("works again"), "unreachable": N_("loses power (unreachable)"), "hung": N_("hangs"),
    "unauthorized": N_("refuses the password"), "not_found": N_("loses its stream path"),
    "slow": N_("answers slowly"), "flapping": N_("keeps dropping out"),
}
BROADCAST_CLASSES = {"emergency": N_("emergency"), "daily": N_("daily"), "drill": N_("drill")}


def describe_action(a: Action, names: Names) -> str:
    """A scenario action in words, by names (the timeline keeps `Action.describe()`, the machine form)."""
    who = names.wearer(a.wearer) if a.wearer else ""
    simple = {
        "sos": N_("{who} presses SOS"), "fall": N_("{who} falls"), "remove_band": N_("{who} takes the band off"),
        "silence": N_("{who}'s band goes silent"), "unsilence": N_("{who}'s band reports again"),
        "noise": N_("the gateway line picks up noise"), "unplug": N_("the gateway is unplugged"),
        "replug": N_("the gateway is plugged back in"), "link_up": N_("the 4G link comes back"),
    }
    if a.do in simple:
        return _(simple[a.do]).format(who=who)
    if a.do == "drain":
        return _("{who}'s battery drops to {pct}%").format(who=who, pct=a.pct)
    if a.do == "camera":
        mode = CAMERA_MODES.get(a.mode or "")
        return _("camera {name} {what}").format(name=names.camera(a.camera or ""),
                                                 what=_(mode) if mode else a.mode)
    if a.do == "link_down":
        return _("the 4G link drops for {s:g} s").format(s=a.for_s)
    if a.do == "link_shape":
        return _("the 4G link slows: {ms:g} ms, loss {loss:.0%}").format(ms=a.latency_ms or 0, loss=a.loss or 0)
    if a.do == "link_stall":
        return _("the 4G link stalls for {s:g} s").format(s=a.for_s)
    if a.do == "power_cut":
        return _("power cut for {s:g} s").format(s=a.for_s)
    if a.do == "broadcast":
        cls = BROADCAST_CLASSES.get(a.cls)
        return _("the county pushes broadcast {title} ({cls})").format(title=names.broadcast(a.id or ""),
                                                                      cls=_(cls) if cls else a.cls)
    if a.do == "cancel":
        return _("the county cancels broadcast {title}").format(title=names.broadcast(a.id or ""))
    return a.describe()


def describe_expect(e: Expect, names: Names) -> str:
    """An [[expect]] in words, by names: "SOS, 在家的奶奶, 恰好 1 次, 03:00 前"."""
    special = {"no_loss": _("nothing lost"), "relay_on": _("amplifier relay on"),
               "relay_off": _("amplifier relay off"), "link_fallback_311": _("link falls back to MQTT 3.1.1")}
    parts = [special.get(e.kind) or words.kind(e.kind)]
    if e.wearer is not None:
        parts.append(names.wearer(e.wearer))
    if e.camera is not None:
        parts.append(names.camera(e.camera))
    if e.cmd is not None:
        parts.append(names.broadcast(e.cmd))
    if e.state is not None:
        parts.append(words.state(e.state))
    if e.reason is not None:
        parts.append(words.reason(e.reason))
    if e.count is not None:
        parts.append(_("exactly {n}").format(n=e.count))
    elif e.min_count is not None:
        parts.append(_("at least {n}").format(n=e.min_count))
    if e.by_s is not None:
        parts.append(_("by {t}").format(t=clock(e.by_s)))
    return _(", ").join(parts)


def summary(scenario: Scenario, seen: list[Seen], outcomes: list[Outcome], *, duration_s: float, speed: float,
            wall_s: float,
            relay_clicks: list[tuple[float, str]], agent_runs: int, mqtt_version: str | None,
            loss: LossReport | None, max_backlog: int, broker: str, started: float | None = None) -> list[str]:
    """The closing summary: one thing per line, by names, with the final state of every camera and broadcast
    (what the dashboard's last frame shows: both fold the same de-duplicated messages in arrival order)."""
    names = names_for(scenario)
    unique = [s for s in seen if s.cls != "state" and not s.duplicate]
    by_class = Counter(s.cls for s in unique)
    meta = scenario.scenario
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started is not None else "-"
    lines = [
        _("Scenario {name}").format(name=meta.description or meta.name),  # its own line: a long title fits
        "  " + _("{duration} of village time at x{speed:g} in {wall:.0f} s, started {when} (local time)").format(
            duration=clock(duration_s), speed=speed, wall=wall_s, when=when),
        "  " + _("seed {seed}, broker {broker}, MQTT {mqtt}, agent started {runs} time(s)").format(
            seed=meta.seed, broker=broker, mqtt=mqtt_version or "-", runs=agent_runs),
        _("County received: {counts} ({dups} duplicate(s) by id)").format(
            counts=_(", ").join(f"{words.cls(c)} {n}" for c, n in sorted(by_class.items())) or "-",
            dups=sum(1 for s in seen if s.duplicate)),
    ]
    alarms = [s for s in unique if s.cls == "alarm"]
    if alarms:
        lines.append(_("Alarms:"))
        for s in alarms[:12]:
            lines.append(f"  {clock(s.t_s)} " + _("{what}: {value}").format(what=words.kind(s.kind),
                                                                         value=_who(s, names)))
    cams: dict[str, list[Seen]] = {c.id: [] for c in scenario.cameras}
    for s in unique:
        if s.kind == "camera":
            cams.setdefault(str(s.envelope["data"].get("camera")), []).append(s)
    if cams:
        lines.append(_("Cameras (final state, then the changes):"))
        for cam, changes in cams.items():
            last = changes[-1].envelope["data"] if changes else {}
            final = words.state_reason(last.get("state"), last.get("reason")) if changes else _("no report")
            steps = _(", ").join(f"{clock(c.t_s)} {words.state(c.envelope['data'].get('state'))}"
                                 for c in changes[:8])
            lines.append("  " + _("{what}: {value}").format(what=names.camera(cam, with_id=True), value=final)
                         + (f"  [{steps}]" if steps else ""))
    receipts: dict[str, list[Seen]] = {}
    for s in unique:
        if s.cls == "receipt":
            receipts.setdefault(str(s.envelope["data"].get("cmd")), []).append(s)
    if receipts:
        lines.append(_("Broadcasts (final state, then the receipts):"))
        for cmd, rs in receipts.items():
            last = rs[-1].envelope["data"]
            steps = " → ".join(words.state(r.envelope["data"].get("state")) for r in rs[:10])
            final = words.state_reason(last.get("state"), last.get("reason"))
            lines.append("  " + _("{what}: {value}").format(what=names.broadcast(cmd, with_id=True), value=final)
                         + f"  [{steps}]")
    on, off = _("on"), _("off")
    clicks = _(", ").join(f"{on if st == 'on' else off} {clock(t)}" for t, st in relay_clicks)
    relay = _("Amplifier relay: {n} click(s)").format(n=len(relay_clicks))
    lines.append(_("{what}: {value}").format(what=relay, value=clicks) if clicks else relay)
    lines.append(_("Backlog: at most {n} queued in the box; {loss}").format(
        n=max_backlog, loss=loss.describe() if loss else _("not measured")))
    for o in outcomes:
        verdict = _("PASS") if o.ok else _("FAIL")
        lines.append(_("{verdict} expected: {what}: {got}").format(verdict=verdict,
                                                                   what=describe_expect(o.expect, names), got=o.got))
    return lines


def _who(s: Seen, names: Names) -> str:
    data = s.envelope.get("data") or {}
    if isinstance(data.get("wearer"), str):
        return names.wearer(data["wearer"], with_id=True)
    if isinstance(data.get("camera"), str):
        return names.camera(data["camera"], with_id=True)
    return names.box_name(s.box)


def write_timeline(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
