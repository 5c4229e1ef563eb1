"""The camera health service: probe cycles, confirm probes, ONVIF checks, frame grabs, reports.

One cycle every `interval_s`: each camera is probed once at a stable per-camera offset (plus a
little jitter) inside the first `spread` of the interval, at most `concurrency` at a time. At the
end of the cycle the pure `Fleet` decides; cameras it wants confirmed are probed again at once.
Decision logic lives in state.py and health.py; this module only does I/O and bookkeeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.cameras import report
from agent.cameras.health import CycleOutcome, Fleet, classify
from agent.cameras.settings import CameraConfig, CamerasConfig
from agent.cameras.state import CamState, Change, Kind, Observation
from agent.cameras.store import CameraRecord, DeviceRecord, Snapshot, SnapshotWriter, StateStore, device_changes
from agent.clock import Clock
from agent.context import AgentContext
from agent.outbox import OutboxRefused
from agent.protocol.envelope import MsgClass
from agent.service import Service, Uplink
from drivers.camera.base import (
    CameraProbes,
    Credentials,
    CredentialsError,
    Frame,
    GrabError,
    GrabUnavailable,
    OnvifAuthError,
    OnvifError,
    ProbeOutcome,
    ProbeResult,
)
from drivers.camera.grab import PictureThresholds, Verdict, judge
from drivers.camera.redact import redact_text, redact_url

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Cam:
    """Per-camera I/O bookkeeping the pure state machine does not need."""

    cfg: CameraConfig
    creds_digest: str | None = None
    last_frame: Frame | None = None
    last_grab: float | None = None  # monotonic
    grab_wanted: bool = True
    picture_bad: Observation | None = None  # the last grab's bad verdict; holds until the next grab
    creds: Credentials | None = None  # as read for this cycle's probe (never logged)
    last_onvif_time: float | None = None
    last_device_info: float | None = None
    onvif_held_until: float | None = None
    onvif_ok: bool | None = None
    skew_s: float | None = None
    latency_ms: float | None = None
    device: DeviceRecord | None = None


class CameraService:
    name = "cameras"

    def __init__(self, cameras: tuple[CameraConfig, ...], settings: CamerasConfig, probes: CameraProbes,
                 uplink: Uplink, clock: Clock, state_path: Path, *, rng: random.Random | None = None,
                 store: StateStore | None = None) -> None:
        self.settings = settings
        self.probes = probes
        self.uplink = uplink
        self.clock = clock
        self.store = store if store is not None else StateStore(state_path)
        self._writer = SnapshotWriter(self.store)  # the state file is written in a thread, never on the loop
        self.rng = rng or random.Random()
        self.cams = {c.id: _Cam(c) for c in cameras}
        self.fleet = Fleet(self.cams, clock, offline_after=settings.offline_after,
                           online_after=settings.online_after, auth_holdoff_s=settings.auth_holdoff_s,
                           maintenance=[c.id for c in cameras if c.maintenance])
        self.thresholds = PictureThresholds(black_luma=settings.black_luma, frozen_diff=settings.frozen_diff)
        self.period_from = clock.time()
        self.reported_until: float | None = None
        self.picture_checks = True
        self._sem: asyncio.Semaphore | None = None
        self._last_report = clock.monotonic()
        self.cycles = 0

    # ------------------------------------------------------------------ lifecycle
    async def run(self, ready: Callable[[], None]) -> None:
        await self.start()
        ready()
        try:
            while True:
                started = self.clock.monotonic()
                await self.run_cycle()
                if self.clock.monotonic() - self._last_report >= self.settings.telemetry_s:
                    await self.report()
                await asyncio.sleep(max(0.0, started + self.settings.interval_s - self.clock.monotonic()))
        finally:
            self._save()
            await self.flush()

    async def start(self) -> None:
        """Restore what the last run knew; announce every camera `unknown` since it stopped watching."""
        snap = await asyncio.to_thread(self.store.load)
        now = self.clock.time()
        for cid, rec in snap.cameras.items():
            if cid in self.cams and rec.device is not None:
                self.cams[cid].device = rec.device
        since = snap.saved_at if snap.saved_at is not None and snap.saved_at <= now else None
        changes = self.fleet.start("agent_down" if since is not None else "agent_start", since)
        if snap.reported_until is not None and snap.reported_until <= now:
            self.period_from = snap.reported_until
            for health in self.fleet.cams.values():
                health.add_seconds(health.state, now - snap.reported_until)
        await self._send_changes(changes)
        self._save()

    # ------------------------------------------------------------------ one cycle
    async def run_cycle(self) -> CycleOutcome:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.settings.concurrency)
        started = asyncio.get_running_loop().time()
        active = [c for c in self.cams.values() if not c.cfg.maintenance]
        looks: dict[str, tuple[ProbeResult, Observation]] = {}
        window = self._window()
        async with asyncio.TaskGroup() as tg:
            for cam in active:
                tg.create_task(self._look_later(cam, self._offset(cam.cfg.id, window), looks),
                               name=f"cameras.probe.{cam.cfg.id}")
        results = {cid: r for cid, (r, _) in looks.items()}
        observations = {cid: o for cid, (_, o) in looks.items()}
        await self._pictures(observations, started)
        link = self.probes.link.lan_up([c.cfg.onvif_host for c in active]) if active else None
        outcome = self.fleet.end_cycle(observations, results, link)
        if outcome.lan_down:
            log.warning("cameras: the box's LAN looks down (link=%s); this cycle counts for no camera", link)
        changes = list(outcome.changes)
        if outcome.confirm:
            confirms: dict[str, tuple[ProbeResult, Observation]] = {}
            async with asyncio.TaskGroup() as tg:
                for cid in outcome.confirm:
                    tg.create_task(self._look_later(self.cams[cid], 0.0, confirms), name=f"cameras.confirm.{cid}")
            for cid, (_, obs) in confirms.items():
                if (change := self.fleet.confirmed(cid, obs)) is not None:
                    changes.append(change)
        self.cycles += 1
        await self._send_changes(changes)
        return CycleOutcome(changes, outcome.confirm, outcome.lan_down)

    def _window(self) -> float:
        s = self.settings
        worst = s.connect_timeout_s + 3 * s.step_timeout_s
        return max(0.0, min(s.spread * s.interval_s, s.interval_s - worst))

    def _offset(self, camera: str, window: float) -> float:
        if window <= 0:
            return 0.0
        base = zlib.crc32(camera.encode()) / 2**32  # stable: a camera is probed at the same point each cycle
        return ((base + self.rng.uniform(-0.05, 0.05)) % 1.0) * window

    async def _look_later(self, cam: _Cam, delay: float, into: dict[str, tuple[ProbeResult, Observation]]) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        into[cam.cfg.id] = await self._look(cam)

    async def _look(self, cam: _Cam) -> tuple[ProbeResult, Observation]:
        cid = cam.cfg.id
        health = self.fleet[cid]
        try:
            creds = await self._credentials(cam)
        except CredentialsError as exc:
            unusable = ProbeResult(ProbeOutcome.ERROR, "credentials", detail=str(exc))
            return unusable, Observation(Kind.BAD, "credentials_unreadable", str(exc))
        held = creds is not None and not health.credentials_allowed()
        assert self._sem is not None
        async with self._sem:
            result = await self.probes.rtsp.probe(cam.cfg.rtsp, creds, send_credentials=not held)
        cam.latency_ms = result.elapsed_s * 1000 if not result.outcome.network_failure else None
        cam.creds = creds
        obs = classify(result, held_back=held)
        if not result.outcome.network_failure and cam.cfg.onvif_port is not None:
            await self._onvif(cam, creds)
        return result, obs

    async def _credentials(self, cam: _Cam) -> Credentials | None:
        path = cam.cfg.credentials
        if path is None:
            return None
        creds = await asyncio.to_thread(Credentials.load, path)  # a file read: never on the loop
        digest = hashlib.sha256(f"{creds.user}\0{creds.password}".encode()).hexdigest()
        if cam.creds_digest is not None and digest != cam.creds_digest:
            log.info("cameras: %s: credentials file changed; trying it again", cam.cfg.id)
            self.fleet[cam.cfg.id].release_credentials()
            cam.onvif_held_until = None
        cam.creds_digest = digest
        return creds

    # ------------------------------------------------------------------ picture
    async def _pictures(self, observations: dict[str, Observation], cycle_started: float) -> None:
        """Frame grabs for cameras whose stream answered, most urgent first, at most `grabs_per_cycle`.

        Grabs run after the cycle's probes so a slow ffmpeg never delays a probe, and the budget (plus a
        stop once half the interval has gone, measured on the event loop) keeps a big site's cycle short.
        A bad verdict holds for the camera until its next grab, which is then due on the next cycle.
        """
        now = self.clock.monotonic()
        due = []
        for cid, obs in observations.items():
            cam = self.cams[cid]
            if obs.kind is not Kind.GOOD or not (cam.cfg.frame_check and self.picture_checks):
                continue
            if cam.picture_bad is not None:
                rank = 0.0  # confirm or clear a bad picture first
            elif cam.grab_wanted or cam.last_grab is None:
                rank = 1.0  # state change or never looked at
            elif now - cam.last_grab >= self.settings.frame_interval_s:
                rank = 2.0 - 1.0 / (1.0 + now - cam.last_grab)  # the oldest first
            else:
                continue
            due.append((rank, cid))
        due.sort()
        loop = asyncio.get_running_loop()
        budget = due[: self.settings.grabs_per_cycle]
        for i in range(0, len(budget), self.settings.grab_concurrency):
            if loop.time() - cycle_started > self.settings.interval_s / 2:
                break  # the rest stay due for the next cycle
            batch = [cid for _, cid in budget[i:i + self.settings.grab_concurrency]]
            verdicts = await asyncio.gather(*(self._check_picture(self.cams[cid]) for cid in batch))
            for cid, verdict in zip(batch, verdicts, strict=True):
                self.cams[cid].picture_bad = None if verdict.kind is Kind.GOOD else verdict
        for cid, obs in observations.items():
            bad = self.cams[cid].picture_bad
            if obs.kind is Kind.GOOD and bad is not None and self.picture_checks and self.cams[cid].cfg.frame_check:
                observations[cid] = bad

    async def _check_picture(self, cam: _Cam) -> Observation:
        cam.last_grab = self.clock.monotonic()
        cam.grab_wanted = False
        creds = cam.creds
        try:
            frame = await self.probes.grabber.grab(cam.cfg.rtsp, creds)
        except GrabUnavailable as exc:
            log.error("cameras: frame checks disabled: %s", exc)
            self.picture_checks = False
            return Observation.good()
        except GrabError as exc:
            secrets = [creds.password] if creds else []
            return Observation(Kind.BAD, "no_frame", redact_text(str(exc), secrets))
        verdict = judge(frame, cam.last_frame, self.thresholds)
        cam.last_frame = frame
        if verdict is Verdict.OK:
            return Observation.good()
        return Observation(Kind.BAD, verdict.value, f"picture is {verdict.value} (clock band cropped)")

    # ------------------------------------------------------------------ ONVIF
    async def _onvif(self, cam: _Cam, creds: Credentials | None) -> None:
        s, now = self.settings, self.clock.monotonic()
        host, port = cam.cfg.onvif_host, cam.cfg.onvif_port
        assert port is not None
        try:
            if cam.last_onvif_time is None or now - cam.last_onvif_time >= s.onvif_interval_s:
                cam.last_onvif_time = now
                cam.skew_s = await self.probes.onvif.system_time(host, port) - self.clock.time()
            due = cam.last_device_info is None or now - cam.last_device_info >= s.device_info_interval_s
            held = cam.onvif_held_until is not None and now < cam.onvif_held_until
            if due and not held:
                cam.last_device_info = now
                info = await self.probes.onvif.device_info(host, port, creds, skew_s=cam.skew_s or 0.0)
                await self._device(cam, DeviceRecord(info.serial, info.firmware, info.model, info.uptime_s,
                                                     self.clock.time()))
            if cam.onvif_ok is False:
                log.info("cameras: %s: ONVIF answers again", cam.cfg.id)
            cam.onvif_ok = True
        except OnvifAuthError as exc:
            cam.onvif_held_until = now + s.auth_holdoff_s  # same lock-out care as RTSP
            log.warning("cameras: %s: ONVIF refused the credentials (%s); not retried for %.0f s",
                        cam.cfg.id, exc, s.auth_holdoff_s)
        except OnvifError as exc:
            if cam.onvif_ok is not False:
                log.warning("cameras: %s: ONVIF at %s:%s: %s", cam.cfg.id, host, port,
                            redact_text(str(exc), [creds.password] if creds else []))
            cam.onvif_ok = False

    async def _device(self, cam: _Cam, new: DeviceRecord) -> None:
        max_gap = 2 * self.settings.device_info_interval_s + self.settings.interval_s
        bodies = device_changes(cam.device, new, max_gap)
        cam.device = new
        for body in bodies:
            log.warning("cameras: %s: %s", cam.cfg.id, body["change"])
            await self._send(MsgClass.EVENT, "camera_device", report.device_event(cam.cfg.id, body),
                             report.ms(new.seen_at))
        if bodies or new.serial:
            self._save()

    # ------------------------------------------------------------------ reports
    async def _send_changes(self, changes: list[Change]) -> None:
        for ch in changes:
            log.info("cameras: %s: %s -> %s%s%s", ch.camera, ch.previous.value, ch.state.value,
                     f" ({ch.reason})" if ch.reason else "", f": {ch.detail}" if ch.detail else "")
            if ch.state is CamState.ONLINE or ch.previous is CamState.UNKNOWN:
                self.cams[ch.camera].grab_wanted = True  # look at the picture on state changes
            await self._send(MsgClass.EVENT, "camera", report.camera_event(ch), report.ms(ch.since))
        if changes:
            self._save()

    async def report(self) -> dict[str, object]:
        """Send `cameras` telemetry for the period since the last one; returns the data sent."""
        now = self.clock.time()
        entries = []
        for cid, cam in self.cams.items():
            h = self.fleet[cid]
            entries.append(report.camera_entry(cid, h.state, h.reason, h.since, h.take_seconds(),
                                               cam.skew_s, cam.latency_ms))
        data = report.telemetry(self.period_from, now, entries)
        self._last_report = self.clock.monotonic()
        await self._send(MsgClass.TELEMETRY, "cameras", data, report.ms(now))
        self.period_from = self.reported_until = now
        self._save()
        return data

    async def _send(self, cls: MsgClass, kind: str, data: dict[str, object], ts_ms: int) -> None:
        try:
            await self.uplink.send(cls, kind, data, ts_ms)
        except OutboxRefused as exc:
            log.warning("cameras: %s not stored: %s", kind, exc)

    def _save(self) -> None:
        """Hand the current state to the writer (a thread); returns at once. `flush` waits for the disk."""
        snap = Snapshot(self.reported_until if self.reported_until is not None else self.period_from,
                        self.clock.time(), {})
        for cid, cam in self.cams.items():
            h = self.fleet[cid]
            snap.cameras[cid] = CameraRecord(h.state.value, h.reason, h.since, cam.device)
        self._writer.submit(snap)

    async def flush(self) -> None:
        """Return once every state saved so far is on disk (or refused: a full disk is logged, as always)."""
        await self._writer.flush()


def make_services(ctx: AgentContext) -> list[Service]:
    cfg = ctx.config
    if not cfg.camera_list:
        return []
    probes = ctx.hardware.camera_probes
    if probes is None:
        raise RuntimeError("cameras are configured but the hardware has no camera probes (agent/hardware.py)")
    log.info("cameras: watching %d: %s", len(cfg.camera_list),
             ", ".join(f"{c.id}={redact_url(c.rtsp)}" for c in cfg.camera_list))
    return [CameraService(cfg.camera_list, cfg.cameras, probes, ctx.uplink, ctx.clock,
                          cfg.box.state_dir / cfg.cameras.state_file)]
