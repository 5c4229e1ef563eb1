"""What the technician watches: a rich Live dashboard, or plain lines (`--no-live`, CI and tests).

`VillageState` is the view model: it is fed what the county received (`apply(seen)`), what the simulator
did (`action(...)`) and what the box did (relay clicks and link edges from the agent's STATUS= line,
backlog from its outbox), and both renderers read only it. Relay state comes from the agent's own
`relay=on|off` status (see sim/agentproc.py): the box's view, which the county cannot see directly.

Everything a person reads goes through the catalog (agent/i18n.py) and shows things by the scenario's
names (`Names`): cameras by name, wearers by their display label, broadcasts by title; the id beside
them only in the wide layout. `render` picks a compact layout below 100 columns or 30 rows, so the
dashboard fits an 80x24 terminal (tests/test_i18n_sim_pty.py runs it there in a real pty).
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent import words
from agent.i18n import _
from sim.countyview import Seen

MAX_LOG = 12
COMPACT_BELOW = (100, 30)  # columns, rows
ALARM_KINDS = ("sos", "fall", "geofence_exit", "band_removed", "lost_contact")


def clock(t_s: float) -> str:
    """Scenario time as mm:ss (h:mm:ss past an hour): the same in every language."""
    t = max(0, int(t_s))  # floored: 59.6 s is still minute 00
    h, rem = divmod(t, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


@dataclass
class Names:
    """The scenario's names for what it holds; ids stay the keys."""

    cameras: dict[str, str] = field(default_factory=dict)
    wearers: dict[str, str] = field(default_factory=dict)  # id -> display label (never a real name)
    broadcasts: dict[str, str] = field(default_factory=dict)  # id -> title
    box: str = ""
    gateway: str = ""

    @staticmethod
    def _pick(table: dict[str, str], key: str, with_id: bool) -> str:
        name = table.get(key, "")
        if not name or name == key:
            return key
        return f"{name} ({key})" if with_id else name

    def camera(self, cam: str, with_id: bool = False) -> str:
        return self._pick(self.cameras, cam, with_id)

    def wearer(self, wearer: str, with_id: bool = False) -> str:
        return self._pick(self.wearers, wearer, with_id)

    def broadcast(self, cmd: str, with_id: bool = False) -> str:
        base = cmd.removesuffix("-cancel")
        if base != cmd and base in self.broadcasts:
            return _("cancel of «{title}»").format(title=self._pick(self.broadcasts, base, with_id))
        title = self.broadcasts.get(cmd, "")
        if not title:
            return cmd
        quoted = _("«{title}»").format(title=title)  # a title as the language quotes one: 《早间广播》
        return f"{quoted} ({cmd})" if with_id else quoted

    def box_name(self, box: str) -> str:
        return f"{self.box} ({box})" if self.box else box


@dataclass
class WearerRow:
    id: str
    lat: float | None = None
    lon: float | None = None
    battery: int | None = None
    fence: str = ""  # fence id
    outside: bool | None = None  # from the box's geofence alarms/events
    last: str = ""  # last alarm/event kind (a code; shown in words)
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
    link_detail: str = ""  # shaped: "80 ms, loss 0.02"
    link_up_agent: bool = False
    backlog: int | None = None
    backlog_max: int = 0
    relay: str = "off"
    relay_clicks: int = 0
    playing: str = ""
    names: Names = field(default_factory=Names)
    title: str = ""  # the scenario's description, shown in the wide header
    wearers: dict[str, WearerRow] = field(default_factory=dict)
    cameras: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (twin mode, reported state)
    camera_reasons: dict[str, str] = field(default_factory=dict)  # id -> the reported state's reason code
    broadcasts: dict[str, str] = field(default_factory=dict)  # id -> last receipt state (a code)
    broadcast_reasons: dict[str, str] = field(default_factory=dict)  # id -> that receipt's reason code
    alarms: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=8))  # (t, kind, subject)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_LOG))
    counts: dict[str, int] = field(default_factory=dict)  # unique envelopes by class (as the summary counts)

    def subject(self, data: dict[str, Any], with_id: bool = False) -> str:
        if isinstance(data.get("wearer"), str):
            return self.names.wearer(data["wearer"], with_id)
        if isinstance(data.get("camera"), str):
            return self.names.camera(data["camera"], with_id)
        if isinstance(data.get("gateway"), str):
            gw = data["gateway"]  # the simulated box has one gateway: the scenario's [gateway] name is its name
            return _("gateway {name}").format(name=f"{self.names.gateway} ({gw})" if self.names.gateway else gw)
        return self.names.box_name(self.box) if with_id else (self.names.box or self.box)

    def apply(self, s: Seen) -> str | None:
        """Fold one county message in; returns a line worth printing (None for routine telemetry)."""
        if s.cls == "state":
            if s.kind == self.box_state:  # the broker's will and the retained copy again after a reconnect
                return None
            self.box_state = s.kind
            return _("county: box {box} is {state}").format(box=self.names.box_name(s.box),
                                                             state=words.state(s.kind))
        if s.duplicate:
            return None
        self.counts[s.cls] = self.counts.get(s.cls, 0) + 1
        data: dict[str, Any] = s.envelope.get("data") or {}
        wearer = data.get("wearer")
        if isinstance(wearer, str):
            row = self.wearers.setdefault(wearer, WearerRow(wearer))
            pos = data.get("pos")
            if isinstance(pos, dict) and pos.get("lat") is not None:
                row.lat, row.lon = pos.get("lat"), pos.get("lon")
            if isinstance(data.get("battery_pct"), int):
                row.battery = data["battery_pct"]
            if s.kind in ("geofence_exit", "geofence_enter"):
                row.fence, row.outside = str(data.get("fence", "")), s.kind == "geofence_exit"
            elif s.kind == "geofence_state" and data.get("state") in ("inside", "outside"):
                row.fence, row.outside = str(data.get("fence", "")), data.get("state") == "outside"
            if s.cls != "telemetry" and s.kind != "geofence_state":  # the fence column shows that one
                row.last, row.last_t = s.kind, s.t_s
        if s.kind == "camera":
            cam = str(data.get("camera"))
            self.cameras[cam] = (self.cameras.get(cam, ("?", ""))[0], str(data.get("state")))
            self.camera_reasons[cam] = str(data.get("reason") or "")
        if s.kind == "heartbeat" or s.cls == "telemetry":
            return None
        if s.cls == "receipt":
            cmd = str(data.get("cmd"))
            self.broadcasts[cmd] = str(data.get("state"))
            self.broadcast_reasons[cmd] = str(data.get("reason") or "")
            return _("county: broadcast {title}: {state}").format(
                title=self.names.broadcast(cmd), state=words.state_reason(self.broadcasts[cmd], data.get("reason")))
        who = self.subject(data)
        if s.cls == "alarm":
            self.alarms.appendleft((s.t_s, s.kind, who))
        if s.kind == "camera":
            return _("county: camera {name}: {state}").format(
                name=who, state=words.state_reason(str(data.get("state")), data.get("reason")))
        if s.kind in ("geofence_exit", "geofence_enter"):
            return _("county: {kind}: {who} (fence {fence})").format(kind=words.kind(s.kind), who=who,
                                                                     fence=data.get("fence", ""))
        if s.kind == "geofence_state":
            return _("county: {kind}: {who} {state} (fence {fence})").format(
                kind=words.kind(s.kind), who=who, state=words.state(data.get("state")), fence=data.get("fence", ""))
        if s.cls == "alarm":
            return _("county: ALARM {kind}: {who}").format(kind=words.kind(s.kind), who=who)
        return _("county: {kind}: {who}").format(kind=words.kind(s.kind), who=who)

    def note(self, line: str, t_s: float | None = None) -> None:
        self.log.appendleft(f"{clock(self.t_s if t_s is None else t_s)} {line}")


class PlainDashboard:
    """One line per thing that happened, with its scenario time, in time order. For CI logs and pipes.

    Lines are held until `release(t)` says nothing earlier can still come (the runner knows: the county
    view's arrival clock and the next scenario item), then printed sorted by time; the rest at exit."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self._held: list[tuple[float, int, str]] = []
        self._order = 0

    def __enter__(self) -> PlainDashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release(float("inf"))
        self.out.flush()

    def line(self, state: VillageState, text: str, t_s: float | None = None) -> None:
        self._order += 1
        heapq.heappush(self._held, (state.t_s if t_s is None else t_s, self._order, text))

    def release(self, upto: float) -> None:
        while self._held and self._held[0][0] <= upto:
            t, _order, text = heapq.heappop(self._held)
            print(f"[{clock(t)}] {text}", file=self.out, flush=True)

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

    def line(self, state: VillageState, text: str, t_s: float | None = None) -> None:
        state.note(text, t_s)

    def release(self, upto: float) -> None:
        return None

    def refresh(self, state: VillageState) -> None:
        width, height = self.console.size
        self.live.update(render(state, width, height), refresh=True)


# ---- drawing ---------------------------------------------------------------------------------------

def _agent_words(state: VillageState) -> str:
    running = _("running") if state.agent_running else _("DOWN")
    return _("agent {running} (start {runs}, MQTT {mqtt})").format(running=running, runs=state.agent_runs,
                                                                   mqtt=state.mqtt_version or "-")


def _link_words(state: VillageState) -> Text:
    style = "green" if state.link == "up" else "bold red" if state.link == "down" else "yellow"
    value = {"up": _("up"), "down": _("DOWN")}.get(state.link) or _("slow ({detail})").format(
        detail=state.link_detail)
    return Text(_("4G link: {state}").format(state=value), style=style)


def _relay_text(state: VillageState) -> Text:
    on = state.relay == "on"
    return (Text(_("amplifier") + " ") + Text(_("ON") if on else _("off"), style="bold green" if on else "dim")
            + Text(" " + _("(clicks: {n})").format(n=state.relay_clicks)))


def _backlog_words(state: VillageState) -> str:
    return _("backlog {n} (max {max})").format(n=state.backlog if state.backlog is not None else "-",
                                               max=state.backlog_max)


def _wearer_cells(state: VillageState, w: WearerRow, with_id: bool) -> tuple[str, str, str, str, Text]:
    pos = f"{w.lat:.5f},{w.lon:.5f}" if w.lat is not None and w.lon is not None else "-"
    battery = f"{w.battery}%" if w.battery is not None else "-"
    if w.outside is None:
        fence = ""
    else:
        fence = (_("outside {fence}") if w.outside else _("inside {fence}")).format(fence=w.fence)
    last = f"{words.kind(w.last)} {clock(w.last_t)}" if w.last_t is not None else ""
    style = "bold red" if w.last in ALARM_KINDS else ""
    return state.names.wearer(w.id, with_id), pos, battery, fence, Text(last, style=style)


def _camera_state(state: VillageState, cam: str) -> str:
    reported = state.cameras.get(cam, ("", ""))[1]
    return words.state_reason(reported, state.camera_reasons.get(cam)) if reported else "-"


def _broadcast_state(state: VillageState, bid: str) -> str:
    return words.state_reason(state.broadcasts[bid], state.broadcast_reasons.get(bid))


def _progress(state: VillageState, bar_width: int) -> Text:
    frac = min(1.0, state.t_s / state.duration_s) if state.duration_s else 1.0
    bar = "█" * int(frac * bar_width) + "░" * (bar_width - int(frac * bar_width))
    return Text(f"{clock(state.t_s)} / {clock(state.duration_s)} {bar} x{state.speed:g}")


def _counts(state: VillageState) -> str:
    parts = [f"{words.cls(k)} {v}" for k, v in sorted(state.counts.items())]
    return _("county received: {counts}").format(counts="  ".join(parts) or "-")


def render(state: VillageState, width: int = 140, height: int = 60) -> RenderableType:
    if width < COMPACT_BELOW[0] or height < COMPACT_BELOW[1]:
        return render_compact(state, width, height)
    return render_wide(state)


def render_wide(state: VillageState) -> Group:
    title = Text(_("Village sim: {name}").format(name=state.title or state.scenario), style="bold")
    title.truncate(150, overflow="ellipsis")
    head = Table.grid(expand=True, padding=(0, 2))
    head.add_row(
        Text(_("box {box}: {state}").format(box=state.names.box_name(state.box), state=words.state(state.box_state))),
        Text(_agent_words(state)),
    )
    head.add_row(
        _link_words(state) + Text("   " + (_("agent link connected") if state.link_up_agent
                                           else _("agent link not connected"))),
        Text(_backlog_words(state) + "   ") + _relay_text(state),
    )

    wearers = Table(title=_("wearers"), expand=True)
    for col in (_("who"), _("position"), _("battery"), _("fence"), _("last")):
        wearers.add_column(col)
    for w in state.wearers.values():
        wearers.add_row(*_wearer_cells(state, w, with_id=True))

    side = Table(title=_("cameras / broadcasts"), expand=True)
    side.add_column(_("what"))
    side.add_column(_("state"))
    for cam, (_mode, reported) in state.cameras.items():
        side.add_row(_("camera {name}").format(name=state.names.camera(cam, with_id=True)),
                     Text(_camera_state(state, cam), style="red" if reported == "offline" else ""))
    for bid in state.broadcasts:
        side.add_row(_("broadcast {title}").format(title=state.names.broadcast(bid, with_id=True)),
                     _broadcast_state(state, bid))

    grid = Table.grid(expand=True)
    grid.add_column(ratio=3)
    grid.add_column(ratio=2)
    grid.add_row(wearers, side)

    alarms = Text("\n".join(f"{clock(t)} " + _("{what}: {value}").format(what=words.kind(k), value=who)
                            for t, k, who in state.alarms) or _("none"),
                  style="red")
    log = Text("\n".join(state.log))
    progress = _progress(state, 40) + Text("   " + _counts(state))
    return Group(Panel(Group(title, head)), grid, Panel(alarms, title=_("alarms (latest first)")),
                 Panel(log, title=_("what happened")), progress)


def render_compact(state: VillageState, width: int, height: int) -> Group:
    """One line per thing, most important first, each cut to the width (never wrapped into the next).

    A row about something (a wearer, a camera, a broadcast) gives up its name's end before its state, and when
    there are more wearers than rows, the ones with news are shown and the rest counted, so the cameras,
    broadcasts and counts below always stay on the screen."""
    lines: list[Text] = []
    sep = Text("  ")

    def add(*parts: Text | str, style: str = "", shrink_first: bool = False) -> None:
        texts = [p if isinstance(p, Text) else Text(p) for p in parts]
        if shrink_first and len(texts) > 1:
            rest = sum(t.cell_len for t in texts[1:]) + sep.cell_len * (len(texts) - 1)
            texts[0].truncate(max(6, width - rest), overflow="ellipsis")
        line = Text(style=style)
        for i, part in enumerate(texts):
            if i:
                line.append_text(sep)
            line.append_text(part)
        line.no_wrap, line.overflow = True, "ellipsis"
        line.truncate(width, overflow="ellipsis")
        lines.append(line)

    add(Text(_("Village sim: {name}").format(name=state.names.box or state.scenario), style="bold"),
        _("box {state}").format(state=words.state(state.box_state)), _agent_words(state))
    add(_link_words(state), _backlog_words(state), _relay_text(state))
    add(_progress(state, max(10, min(30, width - 40))))
    things = len(state.cameras) + len(state.broadcasts)
    fixed = len(lines) + 1 + (1 + things if things else 0) + 1  # headings, cameras, broadcasts, counts
    wearers = list(state.wearers.values())
    room_w = max(1, height - 1 - fixed - 2)  # leave at least a heading and one line of what happened
    shown = wearers
    if len(wearers) > room_w:  # news first: an alarm, then the latest event
        ranked = sorted(wearers, key=lambda w: (w.last not in ALARM_KINDS, -(w.last_t or -1.0)))
        shown = [w for w in wearers if w in ranked[:room_w - 1]]
    add(Text(_("wearers"), style="bold underline"))
    for w in shown:
        who, _pos, battery, fence, last = _wearer_cells(state, w, with_id=False)
        parts: list[Text | str] = [" " + who]
        if w.battery is not None:
            parts.append(_("battery {pct}").format(pct=battery))
        parts += [p for p in (fence, last) if p]
        add(*parts, shrink_first=True)
    if len(shown) < len(wearers):
        add(" " + _("… and {n} more").format(n=len(wearers) - len(shown)), style="dim")
    if things:
        add(Text(_("cameras / broadcasts"), style="bold underline"))
    for cam, (_mode, reported) in state.cameras.items():
        add(Text(" " + _("camera {name}").format(name=state.names.camera(cam))),
            Text(_camera_state(state, cam), style="red" if reported == "offline" else ""), shrink_first=True)
    for bid in state.broadcasts:
        add(" " + _("broadcast {title}").format(title=state.names.broadcast(bid)), _broadcast_state(state, bid),
            shrink_first=True)
    add(_counts(state))
    room = height - 1 - len(lines)  # the last row stays free: Live's cursor sits there
    if room >= 2:
        add(Text(_("what happened"), style="bold underline"))
        for entry in list(state.log)[:room - 1]:
            add(" " + entry, style="red" if any(words.kind(k) in entry for k in ALARM_KINDS) else "")
    return Group(*lines[:max(1, height - 1)])
