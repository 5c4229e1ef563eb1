"""The county-side verdict: invariants checked at the end of a soak, and the figures, from what was recorded.

Sources: the county collector's arrivals (observe.County), the proxy's ledger of what crossed the wire
(proxy.Ledger), every outbox row the watcher saw plus what is left in the outbox and its persisted
counters (observe.OutboxWatcher), the band twin's presses and the agent's AL replies, the commands
sent, the agent's STATUS= line (the relay's switches; bench/soak/faults.SoakAgent) placed among the lines of
its log that say which commands the router accepted, the faults injected and the RSS samples.

"Produced" = committed by the agent: seen in the outbox file or published on the wire. A produced message
that the county never got is classified:
- still in the outbox at the end (the drain did not finish: a failure),
- `broker_window`: the broker PUBACKed it and was SIGKILLed afterwards, before it saved or handed it on
  (mqtt-notes 9; counted apart, not a loss in the agent),
- `evicted`: telemetry/events, up to what the outbox's counters say it evicted or expired,
- otherwise lost by the agent (a failure).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.soak.faults import KINDS, Fault
from bench.soak.load import Press, SentCommand
from bench.soak.observe import Arrival
from bench.soak.proxy import Ledger

URGENT = ("alarm", "receipt")
ACCEPTED_RE = re.compile(r"commands: broadcast\.play (\S+) accepted")
MEMORY_MIN_RUN_S = 30.0  # shorter agent runs are not judged for memory growth
MEMORY_SLACK_KB = 16 * 1024


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Inputs:
    box: str
    envelopes: list[tuple[float, dict[str, Any], bytes]]  # county arrivals (t, envelope, raw)
    arrivals: list[Arrival]
    ledger: Ledger
    outbox_seen: dict[str, tuple[str, bytes]]
    outbox_left: set[str]
    counters: dict[str, int]
    presses: list[Press]
    acked_devices: set[str]
    commands: list[SentCommand]
    agent_log: str  # the log file's bytes, decoded with surrogateescape (offsets are in bytes)
    relay_statuses: list[tuple[int, str]]  # (log offset when it arrived, "on"/"off") per STATUS= naming the relay
    faults: list[Fault]
    skipped: dict[str, str]
    rss_runs: list[list[tuple[float, int]]]
    agent_crashes: int
    seconds: float
    max_depth: int = 0


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks], "figures": self.figures}


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def check(i: Inputs) -> Verdict:
    v = Verdict()
    delivered: dict[str, bytes] = {}
    dup_arrivals = 0
    reused_at_county: set[str] = set()
    for _t, env, raw in i.envelopes:
        first = delivered.setdefault(env["id"], raw)
        if first is not raw:
            dup_arrivals += 1
            if first != raw:
                reused_at_county.add(env["id"])
    produced: dict[str, str] = {mid: cls for mid, (cls, _b) in i.outbox_seen.items()}
    for s in i.ledger.sent:
        produced.setdefault(s.id, s.cls)
    _losses(v, i, produced, delivered)
    _seq(v, i, delivered, reused_at_county)
    _order(v, i)
    _relay(v, i)
    _memory(v, i)
    _figures(v, i, produced, delivered, dup_arrivals)
    return v


def _losses(v: Verdict, i: Inputs, produced: dict[str, str], delivered: dict[str, bytes]) -> None:
    kills = sorted(f.t0 for f in i.faults if f.kind == "broker_kill")
    missing: dict[str, Counter[str]] = defaultdict(Counter)
    for mid, cls in produced.items():
        if mid in delivered:
            continue
        acked = i.ledger.acked.get(mid)
        if mid in i.outbox_left:
            missing[cls]["left_in_outbox"] += 1
        elif acked is not None and any(k > acked for k in kills):
            missing[cls]["broker_window"] += 1
        else:
            missing[cls]["gone"] += 1
    v.figures["missing_at_county"] = {cls: dict(c) for cls, c in missing.items()}
    for cls in URGENT:
        m = missing.get(cls, Counter())
        n = sum(1 for c in produced.values() if c == cls)
        bad = m["gone"] + m["left_in_outbox"]
        v.add(f"every {cls} delivered", bad == 0,
              f"{n} produced, {n - sum(m.values())} delivered, {m['broker_window']} in the broker's SIGKILL window "
              f"(mqtt-notes 9), {m['left_in_outbox']} left in the outbox, {m['gone']} lost by the agent")
    bad_counters = {k: n for k, n in i.counters.items() if k.split(".")[-1] in URGENT and n}
    v.add("alarms and receipts never evicted or refused", not bad_counters, f"outbox counters {i.counters}")
    for cls in ("event", "telemetry"):
        m = missing.get(cls, Counter())
        allowed = i.counters.get(f"evicted.{cls}", 0) + i.counters.get(f"expired.{cls}", 0)
        v.add(f"{cls} losses all counted", m["gone"] <= allowed and m["left_in_outbox"] == 0,
              f"{m['gone']} committed and not delivered <= {allowed} evicted/expired per the outbox counters; "
              f"{m['broker_window']} in the broker window, {m['left_in_outbox']} left in the outbox")


def _seq(v: Verdict, i: Inputs, delivered: dict[str, bytes], reused_county: set[str]) -> None:
    bad = set(i.ledger.reused) | reused_county
    for mid, (_cls, body) in i.outbox_seen.items():
        if mid in delivered and delivered[mid] != body:
            bad.add(mid)
        if mid in i.ledger.body and i.ledger.body[mid] != body:
            bad.add(mid)
    wrong_id = [mid for mid, raw in delivered.items()
                if (env := json.loads(raw)) and (env["box"] != i.box or mid != f"{i.box}:{env['seq']}")]
    v.add("no seq reused (one id, one content)", not bad and not wrong_id,
          f"{len(delivered)} ids compared across the outbox, the wire and the county; "
          f"{len(bad)} with two contents {sorted(bad)[:5]}, {len(wrong_id)} with id != box:seq")


def _order(v: Verdict, i: Inputs) -> None:
    last: dict[tuple[int, str], int] = {}
    inversions: list[str] = []
    checked = 0
    for s in i.ledger.sent:
        if s.dup:
            continue
        key = (s.conn, s.cls)
        if key in last and s.seq <= last[key]:
            inversions.append(f"conn {s.conn} {s.cls}: {s.seq} after {last[key]}")
        last[key] = max(s.seq, last.get(key, 0))
        checked += 1
    v.add("per-class order kept within a connection", not inversions,
          f"{checked} first publishes on {len({s.conn for s in i.ledger.sent})} connections; "
          f"{len(inversions)} out of order {inversions[:3]}")


def _relay(v: Verdict, i: Inputs) -> None:
    valid = {c.id for c in i.commands if c.valid}
    refused_new = {c.id for c in i.commands if not c.valid and c.why != "replay"}
    accepted: Counter[str] = Counter()
    unauthorized: list[str] = []
    relay_on = 0
    authorized = False
    relay = "off"
    last_line = ""
    for at, kind, text in _merged(i.agent_log, i.relay_statuses):
        if kind == "status":
            if text == "on" and relay != "on":
                relay_on += 1
                if not authorized:
                    unauthorized.append(f"relay on at log byte {at}, after {last_line[:100]!r}")
            relay = text
            continue
        last_line = text
        if text.startswith("--- run "):
            authorized = False  # a fresh process: only a resumed schedule or a new command may switch it on
            relay = "off"  # and it starts with the relay off (the power cut or the stop switched it off)
        elif m := ACCEPTED_RE.search(text):
            accepted[m.group(1)] += 1
            authorized = authorized or m.group(1) in valid
        elif "broadcast schedule resumed" in text:
            authorized = True
    wrongly = sorted(set(accepted) & refused_new) + [c for c, n in accepted.items() if n > 1]
    receipts: Counter[tuple[str, str]] = Counter()
    reasons: dict[str, str] = {}
    for _t, env, _raw in i.envelopes:
        if env.get("kind") == "cmd":
            receipts[(env["data"].get("cmd"), env["data"].get("state"))] += 1
            if env["data"].get("state") == "rejected":
                reasons.setdefault(env["data"].get("cmd"), str(env["data"].get("reason")))
    # a valid command can still be refused: expired by a stepped clock, id not recordable on a full disk
    valid_refused = Counter(reasons[c] for c in valid if c in reasons and not receipts[(c, "started")])
    by_why = Counter(c.why for c in i.commands)
    rejected = sum(1 for c in i.commands if not c.valid and c.why != "replay" and receipts[(c.id, "rejected")])
    replays_rejected = sum(1 for c in i.commands if c.why == "replay" and receipts[(c.id, "rejected")])
    started = sum(1 for c in valid if receipts[(c, "started")])
    v.figures["commands"] = {"sent": dict(by_why), "valid_accepted": len(set(accepted) & valid),
                             "valid_started": started, "invalid_rejected_receipts": rejected,
                             "replays_rejected_receipts": replays_rejected, "relay_on": relay_on,
                             "valid_refused_by_reason": dict(valid_refused)}
    v.add("relay never on without a valid command", not unauthorized and not wrongly,
          f"{relay_on} relay-on (STATUS=), {len(unauthorized)} without a valid command or resumed schedule before it "
          f"{unauthorized[:3]}; "
          f"{len(accepted)} commands accepted, {len(wrongly)} of them invalid or accepted twice {wrongly[:3]}")


def _merged(log: str, statuses: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """The log's lines and the STATUS= relay values in the order they happened: a line that ended at or before
    the log size a status arrived at was written before it (the agent logs, then switches and sends)."""
    events: list[tuple[int, int, int, str, str]] = []
    end = 0
    for n, raw in enumerate(log.encode("utf-8", "surrogateescape").splitlines(keepends=True)):
        end += len(raw)
        events.append((end, 0, n, "line", raw.decode("utf-8", "replace").rstrip("\r\n")))
    for n, (at, relay) in enumerate(statuses):
        events.append((at, 1, n, "status", relay))
    events.sort(key=lambda e: e[:3])
    return [(at, kind, text) for at, _o, _n, kind, text in events]


def _memory(v: Verdict, i: Inputs) -> None:
    runs = [r for r in i.rss_runs if len(r) >= 2]
    if not runs:
        v.figures["rss_kb"] = None
        return
    longest = max(runs, key=lambda r: r[-1][0] - r[0][0])
    span = longest[-1][0] - longest[0][0]
    warm = [kb for t, kb in longest if t - longest[0][0] >= min(10.0, span / 4)] or [longest[-1][1]]
    start, end = warm[0], longest[-1][1]
    v.figures["rss_kb"] = {"longest_run_s": round(span, 1), "start": start, "end": end,
                           "max_any_run": max(kb for r in runs for _t, kb in r)}
    if span < MEMORY_MIN_RUN_S:
        v.figures["rss_kb"]["judged"] = False
        return
    limit = int(start * 1.25) + MEMORY_SLACK_KB
    v.add("memory flat", end <= limit, f"RSS {start} kB -> {end} kB over {span:.0f} s (limit {limit} kB)")


def _figures(v: Verdict, i: Inputs, produced: dict[str, str], delivered: dict[str, bytes], dups: int) -> None:
    f = v.figures
    f["seconds"] = round(i.seconds, 1)
    f["faults"] = {k: sum(1 for x in i.faults if x.kind == k) for k in KINDS}
    f["faults_skipped"] = i.skipped
    f["agent_crashes"] = i.agent_crashes
    f["produced"] = dict(Counter(produced.values()))
    f["delivered"] = dict(Counter(cls for mid, cls in produced.items() if mid in delivered))
    f["duplicate_arrivals"] = dups
    f["wire"] = {"publishes": len(i.ledger.sent), "resends": len(i.ledger.sent) - len(i.ledger.body),
                 "connections": len({s.conn for s in i.ledger.sent})}
    f["outbox_counters"] = i.counters
    backlog = [sum(env["data"]["outbox"]["depth"].values()) for _t, env, _r in i.envelopes
               if env.get("kind") == "heartbeat" and isinstance(env["data"].get("outbox", {}).get("depth"), dict)]
    f["max_backlog"] = {"heartbeat": max(backlog, default=None), "outbox_file": i.max_depth}
    f["recovery_s"] = _recovery(i)
    sos = {env["data"].get("wearer") for _t, env, _r in i.envelopes if env.get("kind") == "sos"}
    pressed = {p.wearer: p for p in i.presses}
    acked = {w for w, p in pressed.items() if p.device in i.acked_devices}
    f["sos_presses"] = {"sent": len(pressed), "acked_by_agent": len(acked),
                        "alarm_delivered": len(set(pressed) & sos),
                        "acked_but_no_alarm": sorted(acked - sos)[:10],
                        "unacked_no_alarm": len(set(pressed) - acked - sos)}


def _recovery(i: Inputs) -> dict[str, Any]:
    sent_at: dict[str, list[float]] = defaultdict(list)
    for s in i.ledger.sent:
        sent_at[s.id].append(s.t)
    times = []
    for f in i.faults:
        if f.kind != "broker_kill" or not f.t1:
            continue
        for t, env, _raw in i.envelopes:  # arrival order
            if t > f.t1 and any(st > f.t1 for st in sent_at.get(env["id"], ())):
                times.append(t - f.t1)
                break
    return {"n": len(times), "p50_s": _r(pct(times, 50)), "p99_s": _r(pct(times, 99)),
            "max_s": _r(max(times, default=None)), "mean_s": _r(statistics.fmean(times) if times else None)}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def render(v: Verdict) -> str:
    f = v.figures
    lines = ["invariants:"]
    lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in v.checks]
    lines.append("figures:")
    for key in ("seconds", "faults", "faults_skipped", "agent_crashes", "produced", "delivered", "missing_at_county",
                "duplicate_arrivals", "wire", "max_backlog", "recovery_s", "rss_kb", "outbox_counters",
                "sos_presses", "commands"):
        lines.append(f"  {key}: {json.dumps(f.get(key), ensure_ascii=False)}")
    lines.append("RESULT: " + ("all invariants hold" if v.ok else "INVARIANT VIOLATED"))
    return "\n".join(lines)
