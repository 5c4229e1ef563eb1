"""The village in a box: broker, link proxy, the real agent, the twins, the county's view and the timeline.

    broker (mosquitto, or amqtt)  <-  netem proxy (the 4G link)  <-  agent process (profile sim)
          ^                                                            |  ^
          county view (paho)                 pty/TCP gateway twin  ----+  +---- camera twins (RTSP, loopback)

Scenario time runs at `speed` x real time from the moment the agent first connects. Everything the
scenario does (band reports every `tick_s`, actions, the end of link outages and power cuts) goes into one
queue ordered by (scenario time, order written), and is done in that order; the runner only sleeps until
each item's time comes. So the sequence of twin operations, and every random draw (one seed), is the
same on every run whatever the machine's speed; only *when* the agent sees them moves.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.i18n import _
from agent.keys import new_keypair
from agent.protocol.jws import load_private_key
from agent.protocol.topics import Topics
from agent.status import StatusError, read_outbox
from county.push import command, play_data, sign
from sim.agentproc import AgentProcessError, AgentWatch, SimAgent, agent_config
from sim.broker import BrokerKind, LocalBroker
from sim.cameras import Mode, SimCamera
from sim.countyview import CountyView, CountyViewError, Seen
from sim.dashboard import LiveDashboard, PlainDashboard, VillageState, WearerRow
from sim.netem import NetemProxy
from sim.report import (
    LossReport,
    Outcome,
    canonical,
    check,
    describe_action,
    loss_report,
    names_for,
    summary,
    timeline_lines,
    write_timeline,
)
from sim.scenario import Action, Scenario
from sim.wristband import GatewayTwin, SimWearer

log = logging.getLogger("sim")
KID = "county-sim"


class SimError(Exception):
    """The simulation could not be set up or run (not: an expectation failed)."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    speed: float | None = None  # None: the scenario's own
    duration_s: float | None = None  # None: the scenario's own
    broker_url: str | None = None  # None: start one
    broker_kind: BrokerKind = "auto"
    seed: int | None = None
    live: bool = True
    timeline: Path | None = None
    workdir: Path | None = None
    # the agent's [mqtt] protocol; None: "3.1.1" when the simulator started amqtt itself (amqtt 0.12 cannot
    # parse an MQTT 5 CONNECT with a will and never answers it, so the link's automatic fallback does not
    # trigger: docs/simulator.md), else "auto"
    mqtt_protocol: Literal["auto", "5", "3.1.1"] | None = None
    connect_timeout_s: float = 60.0  # the agent's first connect, before the scenario clock starts
    external: bool = False  # rehearsal: no local agent; the box named in the scenario is real (needs broker_url)
    key_file: Path | None = None  # external: the county key the real box trusts, for broadcasts
    kid: str = KID
    # the county server beside the run (sim/county_server.py); `village sim run` turns it on when the [county]
    # extra is installed, so library callers (tests) get it only by asking
    county: bool = False


@dataclass
class RunResult:
    outcomes: list[Outcome]
    canonical: dict[str, Any]
    summary: list[str]
    timeline: Path
    seen: list[Seen]
    relay_clicks: list[tuple[float, str]]
    mqtt_version: str | None
    loss: LossReport | None
    agent_exit_codes: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


@dataclass(order=True)
class _Item:
    t_s: float
    order: int
    what: str = field(compare=False)
    run: Callable[[], Any] = field(compare=False)
    label: str = field(default="", compare=False)  # what the dashboard says (translated); "" = say nothing


class Village:
    def __init__(self, scenario: Scenario, opts: RunOptions) -> None:
        self.sc = scenario
        self.opts = opts
        self.speed = opts.speed or scenario.scenario.speed
        self.duration_s = opts.duration_s or scenario.scenario.duration_s
        self.seed = opts.seed if opts.seed is not None else scenario.scenario.seed
        self.topics = Topics()
        self.state = VillageState(scenario.scenario.name, scenario.box.id, self.duration_s, self.speed, "",
                                  names=names_for(scenario), title=scenario.scenario.description)
        self._pending_t = 0.0  # the time of the next scenario item not yet said (plain lines wait for it)
        self._wall_start = time.time()
        self.actions_done: list[dict[str, Any]] = []
        self.box_events: list[dict[str, Any]] = []
        self._t0: float | None = None
        self._queue: list[_Item] = []
        self._order = 0
        self._agent_task: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._dash: PlainDashboard | LiveDashboard | None = None
        self.agent: SimAgent | None = None
        self.protocol: Literal["auto", "5", "3.1.1"] = "auto"
        self.county_server: Any = None  # sim.county_server.CountyServer when running

    # ---- time --------------------------------------------------------------------------------------

    def scenario_time(self) -> float:
        if self._t0 is None:
            return 0.0
        return (time.monotonic() - self._t0) * self.speed

    async def _until(self, t_s: float) -> None:
        assert self._t0 is not None
        await asyncio.sleep(max(0.0, self._t0 + t_s / self.speed - time.monotonic()))

    def _at(self, t_s: float, what: str, run: Callable[[], Any], label: str = "") -> None:
        self._order += 1
        heapq.heappush(self._queue, _Item(t_s, self._order, what, run, label))

    # ---- the run -----------------------------------------------------------------------------------

    def _refuse_for_external(self) -> None:
        if not self.opts.external:
            return
        if self.opts.broker_url is None:
            raise SimError(_("--external-box needs --broker: the county broker the real box talks to"))
        local_only = {"link_down", "link_up", "link_shape", "link_stall", "power_cut"}
        if bad := sorted({a.do for a in self.sc.actions} & local_only):
            raise SimError(_("--external-box: the scenario does {actions}, which needs the local agent").format(
                actions=", ".join(bad)))
        if self.opts.key_file is None and any(a.do in ("broadcast", "cancel") for a in self.sc.actions):
            raise SimError(_("--external-box: broadcasts need --key FILE --kid ID (a county key the box trusts)"))

    async def run(self) -> RunResult:
        self._refuse_for_external()
        with tempfile.TemporaryDirectory(prefix="village-sim-") as tmp:
            workdir = self.opts.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            dash: PlainDashboard | LiveDashboard = LiveDashboard() if self.opts.live else PlainDashboard()
            broker = None
            if self.opts.broker_url is None:
                broker = await asyncio.to_thread(LocalBroker(workdir / "broker", self.opts.broker_kind).start)
                url, broker_name = broker.url, str(broker.kind)
                self.protocol = self.opts.mqtt_protocol or ("3.1.1" if broker.kind == "amqtt" else "auto")
            else:
                url, broker_name = self.opts.broker_url, "external"
                self.protocol = self.opts.mqtt_protocol or "auto"
            self.state.broker = broker_name
            try:
                with dash:
                    self._dash = dash
                    return await self._run(workdir, url, broker_name)
            except* (AgentProcessError, CountyViewError, OSError) as group:
                first = group.exceptions[0]
                raise SimError(str(first)) from first
            finally:
                if broker is not None:
                    await asyncio.to_thread(broker.stop)

    async def _run(self, workdir: Path, url: str, broker_name: str) -> RunResult:
        sc, wall0 = self.sc, time.monotonic()
        parts = urlsplit(url)
        county = CountyView(url, self.scenario_time, client_id=f"county-sim-{sc.box.id}")
        await asyncio.to_thread(county.start)
        for old in ("keys", "state"):  # a kept --workdir: every run starts with a fresh box and a fresh key
            shutil.rmtree(workdir / old, ignore_errors=True)
        key_path, pub_path = new_keypair(KID, workdir / "keys")
        self.kid = KID
        if self.opts.external and self.opts.key_file is not None:  # the county key the real box trusts
            key_path, self.kid = self.opts.key_file, self.opts.kid
        self.key = load_private_key(key_path)
        wearers = [SimWearer(w.device, [(p[0], p[1]) for p in w.path], speed_m_s=w.speed_m_s, jitter_m=w.jitter_m,
                             battery_pct=w.battery_pct) for w in sc.wearers]
        self.devices = {w.id: w.device for w in sc.wearers}
        self.cameras = {c.id: SimCamera(id=c.id, mode=Mode(c.mode), onvif=False) for c in sc.cameras}
        for cam in self.cameras.values():
            await cam.start()
            self.state.cameras[cam.id] = (cam.mode.value, "")
        for w in sc.wearers:
            self.state.wearers[w.id] = WearerRow(w.id)
        try:
            await self._start_county_server(workdir, url, broker_name, key_path)
            async with GatewayTwin(sc.gateway.codec, wearers, link=sc.gateway.link, seed=self.seed,
                                   directory=workdir) as twin:
                self.twin, self.county = twin, county
                cams = []
                for cam in self.cameras.values():
                    creds = cam.write_credentials(workdir / f"{cam.id}.secret")
                    cams.append({"id": cam.id, "rtsp": cam.url, "credentials": str(creds), "frame_check": False})
                if self.opts.external:
                    await self._run_external(cams)
                    loss = None  # nothing local to measure: the box is someone else's
                else:
                    async with NetemProxy(parts.hostname or "127.0.0.1", parts.port or 1883, seed=self.seed) as proxy:
                        self.proxy = proxy
                        loss = await self._run_local(workdir, pub_path, cams)
        finally:
            if self.agent is not None:
                self.agent.close()
            for cam in self.cameras.values():
                await cam.stop()
            if self.county_server is not None:
                seqs = [int(x.envelope.get("seq", 0)) for x in county.unique(sc.box.id)]
                if not await asyncio.to_thread(self.county_server.settle, sc.box.id, max(seqs, default=None)):
                    self._say(_("county server: it had not stored everything the county view saw when stopped"))
                await asyncio.to_thread(self.county_server.stop)
            await asyncio.to_thread(county.stop)
        return self._finish(workdir, county, loss, time.monotonic() - wall0, broker_name)

    async def _start_county_server(self, workdir: Path, url: str, broker_name: str, key_path: Path) -> None:
        """`village county serve` beside the run (sim/county_server.py), unless off or not installed."""
        from sim.county_server import CountyServer, county_installed

        if not self.opts.county:
            return
        if not county_installed():
            raise SimError(_("--county: the county server is not installed (pip install 'village-edge[county]')"))
        if broker_name == "amqtt":
            self._say(_("county server not started: it needs MQTT 5 shared subscriptions, which amqtt lacks "
                        "(install mosquitto)"))
            return
        server = CountyServer(workdir, url, key_path, self.kid, self.sc.scenario.name, self.sc.scenario.description,
                              self.sc.box.id, tuple(self.sc.box.groups))
        try:
            self.county_server = await asyncio.to_thread(server.start)
        except (RuntimeError, OSError) as exc:  # CountyServer.start says what failed
            raise SimError(_("county server: {error}").format(error=exc)) from exc
        for line in server.banner().splitlines():
            self._say(line)

    async def _run_local(self, workdir: Path, pub_path: Path, cams: list[dict[str, Any]]) -> LossReport | None:
        """The usual run: the real agent as a child process, through the link proxy."""
        sc = self.sc
        fences = None
        if sc.fences:
            fences = workdir / "fences.geojson"
            fences.write_text(json.dumps(sc.geojson()))
        self.state_dir = workdir / "state"
        config = agent_config(sc, speed=self.speed, state_dir=self.state_dir, broker_url=self.proxy.url,
                              gateway_url=self.twin.url, fences_file=fences, trust={KID: str(pub_path)},
                              cameras=cams, mqtt_protocol=self.protocol)
        self.agent = agent = SimAgent(workdir, config, self.scenario_time, clock_offset_s=sc.box.clock_offset_s)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            await self._start_agent()
            await agent.connected(self.opts.connect_timeout_s)
            self._t0 = time.monotonic()
            self.state.mqtt_version = agent.watch.mqtt_version
            watcher = tg.create_task(self._watch(), name="sim.watch")
            await self._play()
            loss = await self._drain()
            agent.terminate()
            if self._agent_task is not None:
                await self._agent_task
            await asyncio.sleep(0.3)  # the retained "offline" state reaches the county view
            self._fold(self.county.take())
            watcher.cancel()
        self._final_frame()
        return loss

    async def _run_external(self, cams: list[dict[str, Any]]) -> None:
        """Rehearsal: the box is real. Only the twins and the county view run here (docs/simulator.md)."""
        box = self.sc.box.id
        self._say(_("external box {box}: point its [[gateway]] url at {url}").format(box=box, url=self.twin.url))
        for cam in cams:
            self._say(_("camera twin {name}: {url} (credentials in {file})").format(
                name=self.state.names.camera(cam["id"], with_id=True), url=cam["rtsp"], file=cam["credentials"]))
        self._say(_("waiting up to {s:g} s for {box} to be online at the county broker").format(
            s=self.opts.connect_timeout_s, box=box))
        deadline = time.monotonic() + self.opts.connect_timeout_s
        while not any(s.cls == "state" and s.box == box and s.kind == "online" for s in list(self.county.seen)):
            if time.monotonic() > deadline:
                raise SimError(_("box {box} did not show up online at the broker within {s:g} s").format(
                    box=box, s=self.opts.connect_timeout_s))
            await asyncio.sleep(0.2)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._t0 = time.monotonic()
            watcher = tg.create_task(self._watch(), name="sim.watch")
            await self._play()
            await asyncio.sleep(max(2.0, self.sc.scenario.drain_s / self.speed))  # what was sent arrives
            self._fold(self.county.take())
            watcher.cancel()
        self._final_frame()
        return None

    def _box_running(self) -> bool:
        return self.agent.running if self.agent is not None else True

    def _finish(self, workdir: Path, county: CountyView, loss: LossReport | None, wall_s: float,
                broker_name: str) -> RunResult:
        seen = list(county.seen)
        watch = self.agent.watch if self.agent is not None else AgentWatch()  # external: not observable
        outcomes = check(self.sc, seen, relay_clicks=watch.relay_clicks, mqtt_version=watch.mqtt_version, loss=loss)
        lines = summary(self.sc, seen, outcomes, duration_s=self.duration_s, speed=self.speed, wall_s=wall_s,
                        relay_clicks=watch.relay_clicks,
                        agent_runs=self.agent.runs if self.agent else 0, mqtt_version=watch.mqtt_version, loss=loss,
                        max_backlog=self.state.backlog_max, broker=broker_name, started=self._wall_start)
        box_events = [{"t": t, "src": "box", "kind": "relay", "state": st} for t, st in watch.relay_clicks]
        path = self.opts.timeline or default_timeline(self.sc.scenario.name)
        write_timeline(path, timeline_lines(self.actions_done, seen, box_events))
        if self.agent is not None and self.agent.log_path.exists():  # kept: the run's workdir is temporary
            shutil.copyfile(self.agent.log_path, path.with_suffix(".agent.log"))
        return RunResult(outcomes, canonical(self.sc, seen), lines, path, seen, list(watch.relay_clicks),
                         watch.mqtt_version, loss, list(self.agent.exit_codes) if self.agent else [])

    async def _start_agent(self) -> None:
        assert self._tg is not None and self.agent is not None
        started = asyncio.Event()
        self._agent_task = self._tg.create_task(self.agent.run(started), name="sim.agent")
        await started.wait()
        self.state.agent_running = True
        self.state.agent_runs = self.agent.runs

    # ---- the scenario's timeline -----------------------------------------------------------------

    async def _play(self) -> None:
        meta = self.sc.scenario
        n = int(self.duration_s // meta.tick_s)
        for k in range(1, n + 1):
            self._at(k * meta.tick_s, "tick", self._tick)
        for a in self.sc.actions:
            if a.t_s <= self.duration_s:
                self._at(a.t_s, a.describe(), functools.partial(self._act, a), describe_action(a, self.state.names))
        while self._queue:
            item = heapq.heappop(self._queue)
            if item.t_s > self.duration_s:
                continue
            self._pending_t = item.t_s
            await self._until(item.t_s)
            self.state.t_s = item.t_s
            if item.what != "tick":
                self.actions_done.append({"t": item.t_s, "src": "scenario", "action": item.what})
                self._say(_("scenario: {what}").format(what=item.label or item.what), item.t_s)
            self._pending_t = self._queue[0].t_s if self._queue else float("inf")
            result = item.run()
            if asyncio.iscoroutine(result):
                await result
        await self._until(self.duration_s)

    async def _tick(self) -> None:
        """Every band walks tick_s and reports; frames are made (and random draws taken) even when no one
        listens, so a power cut does not shift the rest of the run."""
        twin, tick = self.twin, self.sc.scenario.tick_s
        twin.advance(tick)
        frames = [twin.frame_for(w) for w in twin.wearers.values() if not w.silent]
        if not (self._box_running() and twin.plugged):
            return
        try:
            for f in frames:
                await asyncio.wait_for(twin.send(f, split=True), max(1.0, tick / self.speed))
        except TimeoutError:
            self._say(_("gateway twin: the box is not reading (frames dropped, as a gateway with no host does)"))

    async def _act(self, a: Action) -> None:
        twin = self.twin
        device = self.devices.get(a.wearer or "", "")
        if a.do == "sos":
            twin.press_sos(device)
        elif a.do == "fall":
            twin.fall(device)
        elif a.do == "remove_band":
            twin.remove_band(device)
        elif a.do == "drain":
            twin.drain(device, a.pct or 0)
        elif a.do in ("silence", "unsilence"):
            twin.silence(device, a.do == "silence")
        elif a.do == "noise":
            if self._box_running() and twin.plugged:
                await twin.noise()
        elif a.do == "unplug":
            await twin.unplug()
        elif a.do == "replug":
            await twin.replug()
        elif a.do == "camera":
            cam = self.cameras[a.camera or ""]
            await cam.set_mode(Mode(a.mode or ""))  # the scenario checked: a camera action has a mode
            self.state.cameras[cam.id] = (cam.mode.value, self.state.cameras.get(cam.id, ("", ""))[1])
        elif a.do == "link_down":
            await self.proxy.down(a.how)
            self.state.link = "down"
            self._at(a.t_s + (a.for_s or 0), "link_up (end of outage)", self._link_up,
                     _("4G link back (end of outage)"))
        elif a.do == "link_up":
            self._link_up()
        elif a.do == "link_shape":
            self.proxy.set_shape(latency_ms=a.latency_ms, jitter_ms=a.jitter_ms, loss=a.loss)
            shaped = self.proxy.latency_ms or self.proxy.jitter_ms or self.proxy.loss
            self.state.link = f"shaped {self.proxy.latency_ms:g} ms, loss {self.proxy.loss:g}" if shaped else "up"
            self.state.link_detail = _("{ms:g} ms, loss {loss:.0%}").format(ms=self.proxy.latency_ms,
                                                                            loss=self.proxy.loss)
        elif a.do == "link_stall":
            assert self._tg is not None
            self._tg.create_task(self.proxy.stall((a.for_s or 0) / self.speed), name="sim.stall")
        elif a.do == "power_cut":
            await self._power_cut(a)
        elif a.do in ("broadcast", "cancel"):
            await self._command(a)

    def _link_up(self) -> None:
        self.proxy.up()
        self.state.link = "up"

    async def _power_cut(self, a: Action) -> None:
        if self._agent_task is not None:
            self._agent_task.cancel()  # SimAgent.run kills the process group with SIGKILL
            await asyncio.gather(self._agent_task, return_exceptions=True)
        self.state.agent_running = False
        self.box_events.append({"t": round(self.scenario_time(), 3), "src": "box", "kind": "power", "state": "off"})

        async def power_on() -> None:
            assert self.agent is not None
            if a.clock_offset_s is not None:
                self.agent.clock_offset_s = a.clock_offset_s
            await self._start_agent()
            self.box_events.append({"t": round(self.scenario_time(), 3), "src": "box", "kind": "power", "state": "on"})

        self._at(a.t_s + (a.for_s or 0), "power back on", power_on, _("power back on"))

    async def _command(self, a: Action) -> None:
        now = time.time()
        if a.do == "broadcast":
            data = play_data(cls=a.cls, level=a.level, title=a.title, text=a.text, audio=None, start=None, end=None,
                             volume=a.volume)
            payload = command("broadcast.play", data, [f"box:{self.sc.box.id}"], now=now, cmd_id=a.id)
        else:
            payload = command("broadcast.cancel", {"broadcast": a.id}, [f"box:{self.sc.box.id}"], now=now,
                              cmd_id=f"{a.id}-cancel")
        token = sign(payload, self.key, self.kid)
        await asyncio.to_thread(self.county.publish, self.topics.box_cmd(self.sc.box.id), token)
        self.state.broadcasts.setdefault(payload["id"], "pushed")

    # ---- watching ----------------------------------------------------------------------------------

    def _say(self, text: str, t_s: float | None = None) -> None:
        """A line for the dashboard at scenario time t_s (default: now, which no released line is after)."""
        if self._dash is not None:
            self._dash.line(self.state, text, self.scenario_time() if t_s is None else t_s)

    def _fold(self, seen: list[Seen]) -> None:
        for s in seen:
            self.state.t_s = min(s.t_s, self.duration_s)
            if (line := self.state.apply(s)) is not None:
                self._say(line, s.t_s)

    def _final_frame(self) -> None:
        """The last frame shows everything the summary counts: drawn after the final fold."""
        if self._dash is not None:
            self.state.t_s = min(self.scenario_time(), self.duration_s)
            self._dash.refresh(self.state)

    async def _watch(self) -> None:
        """Fold in what the county saw and what the box did; read the backlog; redraw."""
        clicks = 0
        last_backlog = 0.0
        while True:
            self.state.t_s = min(self.scenario_time(), self.duration_s)
            arrived, upto = self.county.take_upto()
            self._fold(arrived)
            watch = self.agent.watch if self.agent is not None else AgentWatch()
            for t, st in watch.relay_clicks[clicks:]:
                self._say(_("box: amplifier relay on") if st == "on" else _("box: amplifier relay off"), t)
            clicks = len(watch.relay_clicks)
            self.state.relay, self.state.relay_clicks = watch.relay, clicks
            self.state.link_up_agent = watch.link_up
            self.state.mqtt_version = watch.mqtt_version
            self.state.agent_running = self._box_running()
            if time.monotonic() - last_backlog >= 0.5:
                last_backlog = time.monotonic()
                depth, _last_seq = await self._outbox()
                if depth is not None:
                    self.state.backlog = depth
                    self.state.backlog_max = max(self.state.backlog_max, depth)
            assert self._dash is not None
            self._dash.release(min(upto, self._pending_t))  # nothing earlier can still come: print in order
            self._dash.refresh(self.state)
            await asyncio.sleep(0.2)

    async def _outbox(self) -> tuple[int | None, int | None]:
        if self.agent is None:  # an external box's outbox is not ours to read
            return None, None
        try:
            view = await asyncio.to_thread(read_outbox, self.state_dir / "outbox.db")
        except StatusError:
            return None, None
        if not view.present:
            return None, None
        return sum(view.depth.values()), view.last_seq

    async def _drain(self) -> LossReport | None:
        """After the end, until the box is quiet: backlog empty, every seq at the county, amplifier off.

        Bounded by drain_s scenario seconds (at least 10 s real); what is still missing then is reported."""
        deadline = time.monotonic() + max(10.0, self.sc.scenario.drain_s / self.speed)
        depth = last_seq = None
        while time.monotonic() < deadline:
            depth, last_seq = await self._outbox()
            if depth == 0 and last_seq is not None and self.agent is not None and self.agent.watch.relay == "off":
                got = {int(s.envelope.get("seq", 0)) for s in self.county.unique(self.sc.box.id)}
                if all(q in got for q in range(1, last_seq + 1)):
                    break
            await asyncio.sleep(0.2)
        self._fold(self.county.take())
        return loss_report(self.sc.box.id, list(self.county.seen), last_seq, depth)


def default_timeline(name: str) -> Path:
    """$TMPDIR/village-sim/NAME-YYYYmmdd-HHMMSS.jsonl: outside the repo, kept after the run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / "village-sim" / f"{name}-{stamp}-{os.getpid()}.jsonl"


async def run_village(scenario: Scenario, opts: RunOptions) -> RunResult:
    return await Village(scenario, opts).run()
