"""What the technician watches: a rich Live dashboard, or plain lines (`--no-live`, CI and tests).

`VillageState` is the view model: it is fed what the county received (`apply(seen)`), what the simulator
did (`action(...)`) and what the box did (relay clicks and link edges from the agent's STATUS= line,
backlog from its outbox), and both renderers read only it. Relay state comes from the agent's own
`relay=on|off` status (see sim/agentproc.py): the box's view, which the county cannot see directly.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sim.countyview import Seen

MAX_LOG = 12


@dataclass
class WearerRow:
    id: str
    lat: float | None = None
    lon: float | None = None
    battery: int | None = None
    fence: str = ""  # inside / outside (from the box's alarms/events)
    last: str = ""  # last alarm/event kind
    last_t: float | None = None


@dataclass
class VillageState:
    scenario: str
    box: str
    duration_s: float
    speed: float
    broker: str
    t_s: float = 0.0
    box_state: str = "starting"
    agent_running: bool = False
    agent_runs: int = 0
    mqtt_version: str | None = None
    link: str = "up"  # the proxy's view: up / down / shaped
    link_up_agent: bool = False
    backlog: int | None = None
    backlog_max: int = 0
    relay: str = "off"
    relay_clicks: int = 0
    playing: str = ""
    wearers: dict[str, WearerRow] = field(default_factory=dict)
    cameras: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (twin mode, reported state)
    broadcasts: dict[str, str] = field(default_factory=dict)  # id -> last receipt state
    alarms: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    log: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_LOG))
    counts: dict[str, int] = field(default_factory=dict)

    def apply(self, s: Seen) -> str | None:
        """Fold one county message in; returns a line worth printing (None for routine telemetry)."""
        self.counts[s.cls] = self.counts.get(s.cls, 0) + 1
        if s.cls == "state":
            self.box_state = s.kind
            return f"county: box {s.box} {s.kind}"
        if s.duplicate:
            return None
        data: dict[str, Any] = s.envelope.get("data") or {}
        wearer = data.get("wearer")
        if isinstance(wearer, str):
            row = self.wearers.setdefault(wearer, WearerRow(wearer))
            pos = data.get("pos")
            if isinstance(pos, dict) and pos.get("lat") is not None:
                row.lat, row.lon = pos.get("lat"), pos.get("lon")
            if isinstance(data.get("battery_pct"), int):
                row.battery = data["battery_pct"]
            if s.kind == "geofence_exit":
                row.fence = f"OUT {data.get('fence', '')}"
            elif s.kind == "geofence_enter":
                row.fence = f"in {data.get('fence', '')}"
            if s.cls != "telemetry":
                row.last, row.last_t = s.kind, s.t_s
        if s.kind == "camera":
            cam = str(data.get("camera"))
            self.cameras[cam] = (self.cameras.get(cam, ("?", ""))[0], str(data.get("state")))
        if s.kind == "heartbeat":
            return None
        if s.cls == "receipt":
            cmd = str(data.get("cmd"))
            self.broadcasts[cmd] = str(data.get("state")) + (f" ({data['reason']})" if data.get("reason") else "")
            return f"county: receipt {cmd} {self.broadcasts[cmd]}"
        if s.cls == "telemetry":
            return None
        keys = ("wearer", "camera", "state", "fence", "gateway")
        what = f"{s.cls} {s.kind} " + " ".join(f"{k}={data[k]}" for k in keys if isinstance(data.get(k), str))
        if s.cls == "alarm":
            self.alarms.appendleft(f"t={s.t_s:5.0f}s {s.kind} {wearer or data.get('camera') or ''}")
        return f"county: {what.strip()}"

    def note(self, line: str) -> None:
        self.log.appendleft(f"t={self.t_s:5.0f}s {line}")


class PlainDashboard:
    """One line per thing that happened, with its scenario time. For CI logs and pipes."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def __enter__(self) -> PlainDashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.flush()

    def line(self, state: VillageState, text: str) -> None:
        print(f"[t={state.t_s:6.1f}s] {text}", file=self.out, flush=True)

    def refresh(self, state: VillageState) -> None:
        return None


class LiveDashboard:
    """The rich Live view, redrawn by `refresh` (the runner calls it a few times a second)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stdout=False)

    def __enter__(self) -> LiveDashboard:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def line(self, state: VillageState, text: str) -> None:
        state.note(text)

    def refresh(self, state: VillageState) -> None:
        self.live.update(render(state), refresh=True)


def render(state: VillageState) -> Group:
    head = Table.grid(expand=True)
    head.add_row(
        Text(f"村村响 village sim: {state.scenario}", style="bold"),
        Text(f"box {state.box}: {state.box_state}  agent {'running' if state.agent_running else 'DOWN'}"
             f" (run {state.agent_runs}, MQTT {state.mqtt_version or '-'})"),
    )
    link_style = "green" if state.link == "up" else "bold red" if state.link == "down" else "yellow"
    head.add_row(
        Text(f"4G link: {state.link}", style=link_style)
        + Text(f"   agent link {'connected' if state.link_up_agent else 'not connected'}"),
        Text(f"backlog {state.backlog if state.backlog is not None else '-'} (max {state.backlog_max})   relay ")
        + Text(state.relay.upper(), style="bold green" if state.relay == "on" else "dim")
        + Text(f" ({state.relay_clicks} clicks)"),
    )

    wearers = Table(title="wearers", expand=True)
    for col in ("id", "position", "battery", "fence", "last"):
        wearers.add_column(col)
    for w in state.wearers.values():
        pos = f"{w.lat:.5f},{w.lon:.5f}" if w.lat is not None and w.lon is not None else "-"
        last = f"{w.last} @{w.last_t:.0f}s" if w.last_t is not None else ""
        wearers.add_row(w.id, pos, f"{w.battery}%" if w.battery is not None else "-", w.fence,
                        Text(last, style="bold red" if w.last in ("sos", "fall", "geofence_exit") else ""))

    side = Table(title="cameras / broadcasts", expand=True)
    side.add_column("what")
    side.add_column("state")
    for cam, (mode, reported) in state.cameras.items():
        side.add_row(f"cam {cam} (twin {mode})", Text(reported or "-", style="red" if reported == "offline" else ""))
    for bid, st in state.broadcasts.items():
        side.add_row(f"broadcast {bid}", st)

    grid = Table.grid(expand=True)
    grid.add_column(ratio=3)
    grid.add_column(ratio=2)
    grid.add_row(wearers, side)

    alarms = Text("\n".join(state.alarms) or "none", style="red")
    log = Text("\n".join(state.log))
    frac = min(1.0, state.t_s / state.duration_s) if state.duration_s else 1.0
    bar = "█" * int(frac * 40) + "░" * (40 - int(frac * 40))
    counts = "  ".join(f"{k} {v}" for k, v in sorted(state.counts.items()))
    progress = Text(f"t={state.t_s:5.0f}s / {state.duration_s:.0f}s  {bar}  x{state.speed:g}   county: {counts}")
    return Group(Panel(head), grid, Panel(alarms, title="alarms (latest first)"), Panel(log, title="what happened"),
                 progress)
