"""The wearables feature in the running agent: gateways in, alarms/events/telemetry out through the outbox.

`make_services(ctx)` returns one `WearablesCore` (name "wearables": opens state_dir/wearables.db, loads
fences and the county's lists, ticks the monitor once a second) and one `GatewayService` per
`[[gateway]]` (name "wearables.gateway.<id>": keeps the gateway open through `GatewayReader`, feeds every
event to the shared engine). It registers the `geofence.set` and `wearers.set` command handlers: invalid
data is answered `rejected` (invalid_fences / invalid_wearers, with `detail`), like a bad `broadcast.play`;
`failed` (store_error) is kept for a valid command that could not be carried out. The
decoder for a gateway comes from `ctx.hardware.decoder_factory(codec)` (the composition root picks it).

Ack after durable: an alarm a band raised (SOS, fall, band removed) is sent with `await uplink.send(...)`
inside the gateway loop, so the reader writes the band's `AL` ack only once the alarm is in the outbox
file (drivers/wristband/reader.py writes a reply when the loop comes back for the next event). If the
outbox cannot store it, no ack is written and the band keeps resending.

Gateway setup: a wired gateway (not `ble:`) gets the hardware profile's `[gateway_firmware]` commands at
every connect (drivers/wristband/setup.py, beside the frame reading). The result is reported on its edges
only (the first one, and each change): one log line (INFO accepted, WARNING not) and one `gateway_setup`
event. A `[[gateway]]` without `url` takes the profile's `serial.url` (`resolve_gateways`). Everything else (positions,
events, the monitor's own alarms) goes out with `uplink.send_nowait`: the outbox group-commits and a
gateway with 500 bands never waits on the disk between position frames. A refused message (outbox full:
telemetry and events only) is counted and logged, never retried here.

Message first, state second: the geofence state a frame changed is handed to wearables.db (write-behind,
aiosqlite: nothing here waits on that disk) only after every message it caused is in the outbox's queue,
so a `geofence_exit` never waits on, or dies with, the state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from agent.config import ConfigError
from agent.context import AgentContext
from agent.outbox import OutboxError
from agent.protocol.commands import Command
from agent.protocol.envelope import MsgClass
from agent.schema import SchemaError
from agent.service import Service
from agent.wearables.engine import WearablesEngine
from agent.wearables.episodes import Out
from agent.wearables.fences import CRS_NAMES, Fence, FenceError, check_assign, load_fences, load_fences_file
from agent.wearables.registry import RegistryError, parse_wearers
from agent.wearables.settings import GatewayConfig, is_ble_url, resolve_gateways
from agent.wearables.store import StoreError, WearablesStore
from drivers.wristband.reader import GatewayReader, GatewayTransport
from drivers.wristband.setup import SetupResult, SetupScript

log = logging.getLogger(__name__)

GEOFENCE_DOC = "geofence"
WEARERS_DOC = "wearers"


class WearablesCore:
    """Owns the engine, the state store and the monitor tick; the gateway services feed it."""

    name = "wearables"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.store = WearablesStore(cfg.box.state_dir / cfg.wearables.file)
        self.engine = WearablesEngine(cfg.wearables, cfg.gateways, cfg.wearers, ctx.clock)
        self.loaded = asyncio.Event()
        self.counters = {"sent": 0, "refused": 0, "failed": 0}
        self.ticks = 0  # monitor ticks done; tests wait on it (never on wall time) before asserting absence
        self.ticked = asyncio.Condition()

    async def run(self, ready: Callable[[], None]) -> None:
        try:
            await self._load()
            self.loaded.set()
            ready()
            while True:
                await asyncio.sleep(self.ctx.config.wearables.tick_s)
                self.emit(self.engine.tick())
                self.ticks += 1
                async with self.ticked:
                    self.ticked.notify_all()
        finally:
            await self.store.close()

    # --- loading ------------------------------------------------------------------------------------

    async def _load(self) -> None:
        cfg = self.ctx.config.wearables
        try:
            await self.store.open()
            self.engine.load_tracks(await self.store.load_tracks())
        except StoreError as exc:  # keep relaying alarms; only geofence state is not kept across restarts
            log.error("wearables: state store unusable, running without it: %s", exc)
            await self.store.close()
        if cfg.fences_file is not None:
            try:  # a file read: off the event loop like every other disk access here
                self.engine.set_local_fences(await asyncio.to_thread(load_fences_file, cfg.fences_file,
                                                                     cfg.fences_crs))
            except FenceError as exc:
                log.error("wearables: [wearables] fences_file not loaded: %s", exc)
        try:
            await self._load_docs()
        except StoreError as exc:
            log.error("wearables: stored county lists unreadable, running without them: %s", exc)
        self.persist()
        n = len(self.engine.fences)
        log.info("wearables: %d wearer(s), %d fence(s), %d gateway(s)", len(self.engine.registry.wearers()), n,
                 len(self.ctx.config.gateways))

    async def _load_docs(self) -> None:
        if not self.store.is_open:
            return
        wearers = await self.store.load_doc(WEARERS_DOC)
        if wearers is not None:
            try:
                self.engine.set_county_wearers(parse_wearers(wearers))
            except RegistryError as exc:
                log.error("wearables: stored county wearer list unusable: %s", exc)
        doc = await self.store.load_doc(GEOFENCE_DOC)
        if doc is not None:
            try:
                fences = load_fences(doc.get("fences"), str(doc.get("crs", "WGS84")))
                self.engine.set_county_fences(fences, check_assign(doc.get("assign"), fences | self._local()))
            except FenceError as exc:
                log.error("wearables: stored county fences unusable: %s", exc)

    def _local(self) -> dict[str, Fence]:
        return self.engine.local_fences

    # --- sending ------------------------------------------------------------------------------------

    def emit(self, outs: list[Out]) -> None:
        for o in outs:
            self._queue(o)
        self.persist()

    def _queue(self, o: Out) -> None:
        fut = self.ctx.uplink.send_nowait(o.cls, o.kind, o.data, o.ts_ms)
        fut.add_done_callback(self._sent)
        if o.cls is MsgClass.ALARM:
            log.info("wearables: %s alarm for %s", o.kind, o.data.get("wearer", o.data.get("gateway")))

    def persist(self) -> None:
        """Hand the engine's geofence state changes to the store (write-behind; never waits).

        Called only after the messages those changes caused are queued in the outbox.
        """
        changes = self.engine.take_track_changes()
        if changes:
            self.store.queue_tracks(changes)

    async def wait_ticks(self, n: int) -> None:
        """Return once the monitor has ticked `n` more times than now (an observation, not a timing)."""
        target = self.ticks + n
        async with self.ticked:
            await self.ticked.wait_for(lambda: self.ticks >= target)

    async def emit_durable(self, outs: list[Out]) -> bool:
        """`emit`, but await the outbox's commit of every alarm; False when one could not be stored.

        Used for what a band sent: its ack follows only what this stored. Order is kept (telemetry queued
        before an alarm is committed with it or earlier). The geofence state goes to the store after.
        """
        stored = True
        for o in outs:
            if o.cls is not MsgClass.ALARM:
                self._queue(o)
                continue
            log.info("wearables: %s alarm for %s", o.kind, o.data.get("wearer", o.data.get("gateway")))
            try:
                await self.ctx.uplink.send(o.cls, o.kind, o.data, o.ts_ms)
            except OutboxError as exc:  # what the Uplink Protocol documents send() raising
                self.counters["failed"] += 1
                log.error("wearables: could not store a %s alarm, the band is not acknowledged: %s", o.kind, exc)
                if "wearer" in o.data:
                    self.engine.episodes.forget_alarm(o.data["wearer"], o.kind)
                stored = False
            else:
                self.counters["sent"] += 1
        self.persist()
        return stored

    def _sent(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.counters["sent"] += 1
        elif type(exc).__name__ == "OutboxRefused":  # by name: features depend on the Uplink Protocol only
            self.counters["refused"] += 1
            if self.counters["refused"] in (1, 10, 100) or self.counters["refused"] % 1000 == 0:
                log.warning("wearables: outbox refused %d message(s): %s", self.counters["refused"], exc)
        else:
            self.counters["failed"] += 1
            log.error("wearables: could not store an uplink message: %s", exc)

    # --- commands -----------------------------------------------------------------------------------

    async def on_geofence_set(self, cmd: Command) -> None:
        await self.loaded.wait()
        data = cmd.data if isinstance(cmd.data, dict) else {}
        crs = data.get("crs", "WGS84")
        try:
            if crs not in CRS_NAMES:
                raise FenceError("crs", f"must be one of {', '.join(CRS_NAMES)}, got {crs!r}")
            fences = load_fences(data.get("fences"), crs)
            assign = check_assign(data.get("assign"), fences | self._local())
        except FenceError as exc:
            await self.ctx.receipts.send(cmd.id, "rejected", reason="invalid_fences", detail=str(exc))
            return
        try:
            if self.store.is_open:
                await self.store.save_doc(GEOFENCE_DOC, {"fences": data.get("fences"), "crs": crs,
                                                         "assign": data.get("assign") or {}}, cmd.id,
                                          self.ctx.clock.time())
        except StoreError as exc:
            await self.ctx.receipts.send(cmd.id, "failed", reason="store_error", detail=str(exc))
            return
        self.engine.set_county_fences(fences, assign)
        self.persist()
        log.info("wearables: geofence.set %s applied: %d fence(s), %d assignment(s)", cmd.id, len(fences),
                 len(assign))
        await self.ctx.receipts.send(cmd.id, "applied", fences=len(fences), wearers=len(assign))

    async def on_wearers_set(self, cmd: Command) -> None:
        await self.loaded.wait()
        try:
            wearers = parse_wearers(cmd.data)
        except RegistryError as exc:
            await self.ctx.receipts.send(cmd.id, "rejected", reason="invalid_wearers", detail=str(exc))
            return
        try:
            if self.store.is_open:
                await self.store.save_doc(WEARERS_DOC, cmd.data, cmd.id, self.ctx.clock.time())
        except StoreError as exc:
            await self.ctx.receipts.send(cmd.id, "failed", reason="store_error", detail=str(exc))
            return
        self.engine.set_county_wearers(wearers)
        self.persist()
        log.info("wearables: wearers.set %s applied: %d wearer(s)", cmd.id, len(wearers))
        await self.ctx.receipts.send(cmd.id, "applied", wearers=len(wearers))


class GatewayService:
    """One `[[gateway]]`: open it (retrying with backoff), decode, hand every event to the engine."""

    def __init__(self, ctx: AgentContext, core: WearablesCore, gateway: GatewayConfig) -> None:
        self.ctx = ctx
        self.core = core
        self.gateway = gateway
        self.name = f"wearables.gateway.{gateway.id}"
        self.reader: GatewayReader | None = None
        self.setup = setup_script(ctx, gateway)
        self.setup_reported: SetupResult | None = None  # the last result logged and sent (an edge)

    async def run(self, ready: Callable[[], None]) -> None:
        opener = self.ctx.hardware.gateway_opener
        decoders = self.ctx.hardware.decoder_factory
        if opener is None or decoders is None:
            raise RuntimeError(f"gateway {self.gateway.id}: this hardware profile has no gateway opener/decoders")
        assert self.gateway.url is not None  # make_services resolved it
        transport: GatewayTransport = opener(self.gateway.url)
        self.reader = GatewayReader(transport, decoders(self.gateway.codec), on_state=self._on_state,
                                    name=self.gateway.id, setup=self.setup, on_setup=self._on_setup)
        await self.core.loaded.wait()
        ready()
        async with contextlib.aclosing(self.reader.events()) as events:
            async for event in events:
                # the reader acks `event` when this body is done: alarms are in the outbox file by then
                if not await self.core.emit_durable(self.core.engine.on_event(self.gateway.id, event)):
                    self.reader.withhold_reply()  # not stored: no ack, so the band sends it again

    def _on_state(self, up: bool, reason: str) -> None:
        self.core.emit(self.core.engine.on_gateway_state(self.gateway.id, up, reason))

    def _on_setup(self, result: SetupResult) -> None:
        """A setup pass ended (after each connect): report it only when it differs from the last report."""
        last = self.setup_reported
        if last is not None and _setup_key(last) == _setup_key(result):
            return  # a reconnect that went as before: nothing new to say
        self.setup_reported = result
        gid, n = self.gateway.id, len(result.results)
        if result.ok:
            log.info("gateway %s: setup accepted (%d command(s))", gid, n)
        else:
            log.warning("gateway %s: setup: %d of %d command(s) not accepted: %s", gid, len(result.failed), n,
                        "; ".join(_describe(r.command, r.outcome, r.reply) for r in result.failed))
        data: dict[str, Any] = {
            "gateway": gid, "state": "ok" if result.ok else "failed", "commands": n,
            "failed": [{"command": r.command, "result": r.outcome, "reply": r.reply} for r in result.failed]}
        self.core.emit([Out(MsgClass.EVENT, "gateway_setup", data, int(self.ctx.clock.time() * 1000))])


def _setup_key(result: SetupResult) -> tuple[object, ...]:
    return tuple((r.index, r.outcome, r.reply) for r in result.failed)


def _describe(command: str, outcome: str, reply: str | None) -> str:
    # command: the profile's printable ASCII; reply: already escaped and bounded by drivers/wristband/setup.py
    return f"{command!r} {outcome}" + (f" (reply {reply})" if reply is not None else "")


def setup_script(ctx: AgentContext, gateway: GatewayConfig) -> SetupScript | None:
    """The profile's `[gateway_firmware]` for a wired gateway; None for `ble:` or when there is nothing to write."""
    fw = ctx.profile.gateway_firmware
    if not fw.commands or gateway.url is None or is_ble_url(gateway.url):
        return None
    return SetupScript(tuple(zip(fw.commands, fw.frames(), strict=True)), fw.expect, fw.reply_timeout_s)


def make_services(ctx: AgentContext) -> list[Service]:
    try:
        gateways = resolve_gateways(ctx.config.gateways, ctx.profile.serial.url, ctx.profile.name)
    except SchemaError as exc:  # agent run exits 2 with this line (agent.cli)
        raise ConfigError("config", exc.key, exc.problem) from None
    core = WearablesCore(ctx)
    ctx.commands.register("geofence.set", core.on_geofence_set)
    ctx.commands.register("wearers.set", core.on_wearers_set)
    services: list[Service] = [core]
    services += [GatewayService(ctx, core, g) for g in gateways]
    if ctx.profile.gateway_firmware.commands and not any(s.setup for s in services if isinstance(s, GatewayService)):
        log.warning("wearables: hardware profile %s has %d [gateway_firmware] command(s) but no wired [[gateway]]"
                    " to write them to", ctx.profile.name, len(ctx.profile.gateway_firmware.commands))
    return services
