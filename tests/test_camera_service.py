"""The camera service over the sim cameras: cycles, reports, restarts, LAN down, ONVIF, secrets.

The service runs its real probes against the loopback twins; time is a ManualClock advanced one
cycle at a time (`run_cycle()` is called directly), so no test waits on the wall clock for timing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.cameras.service import CameraService, make_services
from agent.cameras.settings import CameraConfig, CamerasConfig
from agent.cameras.store import StateStore
from agent.clock import ManualClock
from agent.config import ConfigError, parse_config
from agent.protocol.envelope import Envelope, MsgClass
from drivers.camera.base import CameraProbes
from drivers.camera.grab import FfmpegGrabber
from sim.cameras import Mode, SimCamera, SimLink, sim_probes

CYCLE = 60.0


class RecordingUplink:
    """A test double of agent.service.Uplink: records what would be stored, JSON round-tripped."""

    def __init__(self) -> None:
        self.sent: list[tuple[MsgClass, str, dict[str, Any], int | None]] = []
        self.seq = 0

    async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
        self.seq += 1
        self.sent.append((cls, kind, json.loads(json.dumps(data)), ts_ms))
        return Envelope("box", self.seq, ts_ms or 0, cls, kind, data)

    def send_nowait(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Any:
        return asyncio.ensure_future(self.send(cls, kind, data, ts_ms))

    def events(self, kind: str = "camera") -> list[dict[str, Any]]:
        return [d for c, k, d, _ in self.sent if k == kind and c is MsgClass.EVENT]

    def states(self, camera: str) -> list[tuple[str, str | None]]:
        return [(d["state"], d["reason"]) for d in self.events() if d["camera"] == camera]


def settings(**kw: Any) -> CamerasConfig:
    base: dict[str, Any] = {"spread": 0.0, "connect_timeout_s": 1.0, "step_timeout_s": 1.0, "telemetry_s": 900.0,
                            "grab_timeout_s": 20.0}
    base.update(kw)
    return CamerasConfig(**base)


class Rig:
    def __init__(self, tmp_path: Path, clock: ManualClock) -> None:
        self.tmp, self.clock = tmp_path, clock
        self.cams: list[SimCamera] = []
        self.link = SimLink(True)
        self.uplink = RecordingUplink()
        self.services: list[CameraService] = []
        self.state_path = tmp_path / "state" / "cameras.json"

    async def camera(self, cid: str, *, creds: bool = True, password: str | None = None, onvif: bool = False,
                     frame_check: bool = True, **kw: Any) -> tuple[SimCamera, CameraConfig]:
        cam = await SimCamera(id=cid, clock=self.clock, onvif=onvif, **kw).start()
        self.cams.append(cam)
        path = cam.write_credentials(self.tmp / f"{cid}.secret", password) if creds else None
        return cam, CameraConfig(id=cid, rtsp=cam.url, credentials=path, frame_check=frame_check,
                                 onvif_port=cam.onvif_port if onvif else None)

    def service(self, cfgs: list[CameraConfig], probes: CameraProbes | None = None, *,
                store: StateStore | None = None, **kw: Any) -> CameraService:
        probes = probes or sim_probes(self.cams, self.tmp / "videos", connect_timeout_s=1.0, step_timeout_s=1.0,
                                      link=self.link, onvif_timeout_s=2.0)
        svc = CameraService(tuple(cfgs), settings(**kw), probes, self.uplink, self.clock,
                            self.state_path, store=store)
        self.services.append(svc)
        return svc

    async def cycles(self, svc: CameraService, n: int) -> None:
        for _ in range(n):
            self.clock.advance(CYCLE)
            await svc.run_cycle()

    async def close(self) -> None:
        for svc in self.services:  # the state file's writer thread finishes before the test ends
            await svc.flush()
        for c in self.cams:
            await c.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, ManualClock())
    try:
        yield r
    finally:
        await r.close()


async def test_healthy_camera_goes_online_and_reports_seconds(rig):
    lag_s = 0.05  # the twin answers every RTSP request this late: a known latency, well inside step_timeout_s
    _, cfg = await rig.camera("42068200001320000001", mode=Mode.SLOW, delay_s=lag_s)
    svc = rig.service([cfg])
    t0 = rig.clock.time()
    await svc.start()
    assert rig.uplink.states(cfg.id) == [("unknown", "agent_start")]
    await rig.cycles(svc, 2)
    assert rig.uplink.states(cfg.id)[-1] == ("online", None)
    online = rig.uplink.events()[-1]
    assert online["since"] == round((t0 + 2 * CYCLE) * 1000) and online["previous"] == "unknown"
    assert svc.probes.grabber.grabs >= 1  # the picture was looked at
    rig.clock.advance(900 - 2 * CYCLE)
    data = await svc.report()
    (entry,) = data["cameras"]
    assert entry["seconds"]["unknown"] == 2 * CYCLE and entry["seconds"]["online"] == 900 - 2 * CYCLE
    assert data["summary"]["online"] == 1 and data["summary"]["total"] == 1
    assert (data["from"], data["to"]) == (round(t0 * 1000), round((t0 + 900) * 1000))
    # the probe's wall time: at least one delayed answer (a lower bound only: a busy machine is only slower)
    assert entry["latency_ms"] >= lag_s * 1000
    # the next period starts where this one ended
    rig.clock.advance(60)
    assert (await svc.report())["cameras"][0]["seconds"]["online"] == 60


async def test_every_failure_mode_ends_in_the_right_state(rig, caplog):
    caplog.set_level(logging.DEBUG)
    spec: dict[str, dict[str, Any]] = {
        "healthy": {}, "hung": {"mode": Mode.HUNG}, "locked": {"mode": Mode.UNAUTHORIZED},
        "wrongpath": {"mode": Mode.NOT_FOUND}, "gone": {"mode": Mode.UNREACHABLE},
        "black": {"picture": "black"}, "frozen": {"picture": "frozen"},
        "slow": {"mode": Mode.SLOW, "delay_s": 3.0}, "night": {"picture": "black", "frame_check": False},
    }
    cfgs = []
    for cid, kw in spec.items():
        frame_check = kw.pop("frame_check", True)
        _, cfg = await rig.camera(cid, frame_check=frame_check, **kw)
        cfgs.append(cfg)
    svc = rig.service(cfgs)
    await svc.start()
    await rig.cycles(svc, 5)
    final = {cid: rig.uplink.states(cid)[-1] for cid in spec}
    assert final == {
        "healthy": ("online", None),
        "hung": ("offline", "timeout"),
        "locked": ("degraded", "auth_failed"),
        "wrongpath": ("degraded", "not_found"),
        "gone": ("offline", "unreachable"),
        "black": ("degraded", "black"),
        "frozen": ("degraded", "frozen"),
        "slow": ("offline", "timeout"),
        "night": ("online", None),  # opted out of picture checks
    }
    offline = [e for e in rig.uplink.events() if e["state"] == "offline"]
    assert all(e["failing_since"] < e["since"] for e in offline)
    locked = next(c for c in rig.cams if c.id == "locked")
    assert locked.password_attempts == 1  # held back after the first 401: no lock-out
    for cam in rig.cams:
        assert cam.password not in caplog.text
        assert cam.password not in json.dumps(rig.uplink.sent)


async def test_auth_hold_lasts_an_hour_or_until_the_file_changes(rig):
    cam, cfg = await rig.camera("c1", password="old-password")
    svc = rig.service([cfg])
    await svc.start()
    await rig.cycles(svc, 3)
    assert rig.uplink.states("c1")[-1] == ("degraded", "auth_failed")
    assert cam.password_attempts == 1
    await rig.cycles(svc, 60)  # one hour of cycles: tried once more when the hour is over
    assert cam.password_attempts == 2
    assert cfg.credentials is not None
    cam.write_credentials(cfg.credentials)  # the technician fixes the file
    await rig.cycles(svc, 2)
    assert rig.uplink.states("c1")[-1] == ("online", None)
    assert cam.password_attempts == 4


async def test_flapping_camera_reports_no_flaps(rig):
    _, cfg = await rig.camera("c1", mode=Mode.FLAPPING, flap_every=1)
    svc = rig.service([cfg])
    await svc.start()
    await rig.cycles(svc, 12)
    assert rig.uplink.states("c1") == [("unknown", "agent_start")]


async def test_lan_down_is_unknown_not_offline(rig):
    cfgs = [(await rig.camera(f"c{i}"))[1] for i in range(3)]
    svc = rig.service(cfgs)
    await svc.start()
    await rig.cycles(svc, 2)
    assert all(rig.uplink.states(c.id)[-1] == ("online", None) for c in cfgs)
    for cam in rig.cams:  # the switch dies: every camera is unreachable at once
        await cam.set_mode(Mode.UNREACHABLE)
    await rig.cycles(svc, 5)
    assert all(rig.uplink.states(c.id)[-1] == ("unknown", "lan_down") for c in cfgs)
    assert not [e for e in rig.uplink.events() if e["state"] == "offline"]
    for cam in rig.cams:
        await cam.set_mode(Mode.HEALTHY)
    await rig.cycles(svc, 2)
    assert all(rig.uplink.states(c.id)[-1] == ("online", None) for c in cfgs)
    # the kernel says the cable is out: one cycle of that counts for nothing
    rig.link.up = False
    await rig.cycles(svc, 1)
    rig.link.up = True
    await rig.cycles(svc, 1)
    assert all(rig.uplink.states(c.id)[-1] == ("online", None) for c in cfgs)


async def test_restart_reports_the_downtime_as_unknown(rig):
    _, cfg = await rig.camera("c1")
    svc = rig.service([cfg])
    await svc.start()
    await rig.cycles(svc, 2)
    rig.clock.advance(300)
    await svc.report()
    rig.clock.advance(100)
    svc._save()  # what run()'s finally does at shutdown: hand the state to the writer thread, and wait for it
    await svc.flush()
    stopped = rig.clock.time()
    rig.clock.advance(7200)  # the box was off for two hours
    rig.uplink.sent.clear()
    svc2 = rig.service([cfg])
    await svc2.start()
    (ev,) = rig.uplink.events()
    assert (ev["state"], ev["reason"], ev["since"], ev["previous"]) == ("unknown", "agent_down",
                                                                       round(stopped * 1000), "unknown")
    await rig.cycles(svc2, 2)
    rig.clock.advance(10)
    (entry,) = (await svc2.report())["cameras"]
    # from the end of the last report: 100 s the old run saw but never reported + 7200 off + 120 probing
    assert entry["seconds"]["unknown"] == 100 + 7200 + 2 * CYCLE
    assert entry["seconds"]["online"] == 10


async def test_onvif_skew_reboot_and_replacement(rig):
    cam, cfg = await rig.camera("c1", onvif=True, skew_s=-42.0)
    svc = rig.service([cfg], device_info_interval_s=3600.0, onvif_interval_s=720.0)
    await svc.start()
    await rig.cycles(svc, 2)
    rig.clock.advance(10)
    (entry,) = (await svc.report())["cameras"]
    assert abs(entry["clock_skew_s"] + 42) < 3
    cam.reboot()
    await rig.cycles(svc, 61)
    assert [e["change"] for e in rig.uplink.events("camera_device")] == ["rebooted"]
    cam.replace("NEW-SERIAL-0002")
    await rig.cycles(svc, 61)
    changes = rig.uplink.events("camera_device")
    assert changes[-1]["change"] == "replaced" and changes[-1]["serial"] == "NEW-SERIAL-0002"
    assert changes[-1]["old_serial"] == "DS-2CD2T47G2-L20230101AACH000001"


async def test_real_ffmpeg_errors_are_redacted_everywhere(rig, caplog):
    """The real grabber against a twin: ffmpeg fails at SETUP and prints the URL with the password."""
    caplog.set_level(logging.DEBUG)
    cam, cfg = await rig.camera("c1")
    base = sim_probes(rig.cams, rig.tmp / "videos", link=rig.link)
    probes = CameraProbes(base.rtsp, base.onvif, FfmpegGrabber(timeout_s=20), base.link)
    svc = rig.service([cfg], probes)
    await svc.start()
    await rig.cycles(svc, 3)
    assert rig.uplink.states("c1")[-1] == ("degraded", "no_frame")
    detail = rig.uplink.events()[-1]["detail"]
    assert f"rtsp://***@127.0.0.1:{cam.port}/" in detail  # ffmpeg did print the URL; redacted
    assert cam.password not in caplog.text and cam.password not in json.dumps(rig.uplink.sent)
    assert "admin:" not in caplog.text


async def test_run_loop_cycles_and_saves_on_cancel(rig):
    _, cfg = await rig.camera("c1")
    svc = rig.service([cfg], interval_s=0.05)
    ready = asyncio.Event()
    task = asyncio.create_task(svc.run(ready.set), name="test.cameras")
    await asyncio.wait_for(ready.wait(), 10)
    for _ in range(400):
        if svc.cycles >= 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    saved = json.loads((rig.tmp / "state" / "cameras.json").read_text())
    assert saved["saved_at"] == rig.clock.time() and "c1" in saved["cameras"]


# ------------------------------------------------------------------------------------------ config
def _cfg(tmp_path: Path, camera: dict[str, Any]) -> Any:
    return parse_config({"box": {"id": "b1", "profile": "sim", "state_dir": str(tmp_path)}, "mqtt": {"url": "mqtt://127.0.0.1:1"},
                         "cameras": {"interval_s": 30},
                         "camera": [camera]}, "test.toml")


def test_config_credentials_file_must_be_private(tmp_path):
    secret = tmp_path / "cam.secret"
    secret.write_text("admin:Hunter2-secret\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        _cfg(tmp_path, {"id": "c1", "rtsp": "rtsp://10.0.0.2/x", "credentials": str(secret)})
    assert "camera[0].credentials" in str(exc.value) and "0600" in str(exc.value)
    assert "Hunter2" not in str(exc.value)
    secret.chmod(0o600)
    cfg = _cfg(tmp_path, {"id": "c1", "rtsp": "rtsp://10.0.0.2/x", "credentials": str(secret), "onvif_port": 80,
                          "frame_check": False})
    assert cfg.camera_list[0].onvif_host == "10.0.0.2" and cfg.cameras.interval_s == 30
    secret.write_text("no colon here\n")
    with pytest.raises(ConfigError, match="user:password"):
        _cfg(tmp_path, {"id": "c1", "rtsp": "rtsp://10.0.0.2/x", "credentials": str(secret)})


@pytest.mark.parametrize(("camera", "key"), [
    ({"id": "c1", "rtsp": "rtsp://admin:pw@10.0.0.2/x"}, "camera[0].rtsp"),
    ({"id": "c1", "rtsp": "http://10.0.0.2/x"}, "camera[0].rtsp"),
    ({"id": "bad id!", "rtsp": "rtsp://10.0.0.2/x"}, "camera[0].id"),
    ({"id": "c1", "rtsp": "rtsp://10.0.0.2/x", "onvif_port": 70000}, "camera[0].onvif_port"),
    ({"id": "c1", "rtsp": "rtsp://10.0.0.2/x", "colour": "red"}, "camera[0].colour"),
])
def test_config_errors_name_the_key(tmp_path, camera, key):
    with pytest.raises(ConfigError) as exc:
        _cfg(tmp_path, camera)
    assert exc.value.key == key
    assert "pw@" not in str(exc.value)


def test_make_services(tmp_path):
    from agent.context import AgentContext, Hardware
    from agent.profile import HardwareProfile
    from agent.receipts import Receipts

    cfg = _cfg(tmp_path, {"id": "c1", "rtsp": "rtsp://10.0.0.2/x"})
    uplink, clock = RecordingUplink(), ManualClock()
    from agent.hardware import build_camera_probes

    bare = AgentContext(cfg, HardwareProfile("sim", "sim"), uplink, Receipts(uplink, clock), clock, None,  # type: ignore[arg-type]
                        Hardware())
    with pytest.raises(RuntimeError, match="no camera probes"):
        make_services(bare)  # the composition root must choose the probes
    ctx = AgentContext(cfg, HardwareProfile("sim", "sim"), uplink, Receipts(uplink, clock), clock, None,  # type: ignore[arg-type]
                       Hardware(camera_probes=build_camera_probes(cfg.cameras)))
    (svc,) = make_services(ctx)
    assert svc.name == "cameras"
    no_cams = parse_config({"box": {"id": "b1", "profile": "sim"}, "mqtt": {"url": "mqtt://127.0.0.1:1"}})
    assert make_services(AgentContext(no_cams, HardwareProfile("sim", "sim"), uplink, Receipts(uplink, clock), clock,
                                      None, Hardware())) == []  # type: ignore[arg-type]


async def test_frame_grabs_are_budgeted_per_cycle(rig):
    cfgs = [(await rig.camera(f"c{i}"))[1] for i in range(5)]
    svc = rig.service(cfgs, grabs_per_cycle=2)
    await svc.start()
    await rig.cycles(svc, 1)
    assert svc.probes.grabber.grabs == 2  # the other three stay due
    await rig.cycles(svc, 2)
    assert svc.probes.grabber.grabs == 6
    assert all(rig.uplink.states(c.id)[-1] == ("online", None) for c in cfgs)
