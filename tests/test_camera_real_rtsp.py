"""Against a REAL RTSP server: GStreamer's gst-rtsp-server (sim/gst_rtsp.py) under Debian's python3.

Digest auth, 401 and 404 answered by a real implementation, and real H.264 frames through ffmpeg for the
black / frozen / moving checks. Skipped, with the reason, where GStreamer's RTSP server or an element it
needs (an H.264 encoder: x264enc or openh264enc) is not installed; ./scripts/test installs them on Debian.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cameras.service import CameraService
from agent.cameras.settings import CameraConfig, CamerasConfig
from agent.clock import ManualClock
from agent.hardware import build_camera_probes as real_probes
from drivers.camera.base import Credentials, ProbeOutcome
from drivers.camera.grab import FfmpegGrabber, Frame, Verdict, judge
from drivers.camera.probe import TcpRtspProber
from sim.gst_rtsp import missing_elements
from tests.support import free_port, wait_port
from tests.test_camera_service import RecordingUplink

SYSTEM_PY = "/usr/bin/python3"
SERVER = Path(__file__).resolve().parent.parent / "sim" / "gst_rtsp.py"
PASSWORD = "Real-Gst-Pw-7731"


def _gst_missing() -> str | None:
    if not Path(SYSTEM_PY).exists():
        return f"{SYSTEM_PY} not found (Debian's python3 runs the GStreamer RTSP server)"
    probe = subprocess.run(
        [SYSTEM_PY, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                          "from gi.repository import GstRtspServer"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return ("GStreamer RTSP server not installable here (apt install python3-gi gir1.2-gst-rtsp-server-1.0): "
                f"{probe.stderr.strip().splitlines()[-1:]}")
    check = subprocess.run([SYSTEM_PY, str(SERVER), "--port", "0", "--check"], capture_output=True, text=True,
                           timeout=30)
    if check.returncode != 0:
        return "; ".join(check.stdout.split("\n")).strip("; ") or f"gst_rtsp.py --check: {check.stderr[-300:]}"
    return None


class FakeGst:
    """Gst with only the elements named installed (what `missing_elements` asks of it)."""

    def __init__(self, *installed: str) -> None:
        self.ElementFactory = self
        self.installed = set(installed)

    def find(self, name: str) -> object | None:
        return object() if name in self.installed else None


def test_a_missing_element_is_named_with_its_package() -> None:
    assert missing_elements(FakeGst("videotestsrc", "rtph264pay", "x264enc", "openh264enc"), None) == ([], "x264enc")
    assert missing_elements(FakeGst("videotestsrc", "rtph264pay", "openh264enc"), None) == ([], "openh264enc")
    assert missing_elements(FakeGst("videotestsrc", "rtph264pay"), None) == (
        ["x264enc (gstreamer1.0-plugins-ugly) or openh264enc (gstreamer1.0-plugins-bad)"], None)
    assert missing_elements(FakeGst("videotestsrc", "openh264enc"), "x264enc") == (
        ["rtph264pay (gstreamer1.0-plugins-good)", "x264enc (gstreamer1.0-plugins-ugly)"], None)


@pytest.fixture(scope="module")
def gst_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = _gst_missing()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("gst")
    pw = d / "pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([SYSTEM_PY, str(SERVER), "--port", str(port), "--user", "admin", "--password-file",
                             str(pw), "--mount", "/cam=ball", "--mount", "/black=black", "--mount", "/still=smpte"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_port(port, timeout=20)
        except TimeoutError:
            proc.kill()
            pytest.skip(f"gst-rtsp-server did not start: {proc.communicate(timeout=5)[1][-300:]}")
        yield f"rtsp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


GOOD = Credentials("admin", PASSWORD)


async def test_probe_against_real_server(gst_server):
    prober = TcpRtspProber(connect_timeout_s=3, step_timeout_s=5)
    assert (await prober.probe(f"{gst_server}/cam", GOOD)).outcome is ProbeOutcome.OK
    assert (await prober.probe(f"{gst_server}/cam", Credentials("admin", "wrong"))).outcome is ProbeOutcome.AUTH_FAILED
    assert (await prober.probe(f"{gst_server}/cam", None)).outcome is ProbeOutcome.AUTH_REQUIRED
    assert (await prober.probe(f"{gst_server}/nope", GOOD)).outcome is ProbeOutcome.NOT_FOUND


async def test_grab_real_frames(gst_server):
    grabber = FfmpegGrabber(timeout_s=20, concurrency=2)

    async def grab_all(*paths: str) -> list[Frame]:
        # a TaskGroup, not gather: one failed grab cancels the others instead of leaving them running
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(grabber.grab(f"{gst_server}/{p}", GOOD), name=f"grab.{p}") for p in paths]
        return [t.result() for t in tasks]

    a, black, s1 = await grab_all("cam", "black", "still")
    b, s2 = await grab_all("cam", "still")
    assert grabber.peak == 2
    assert judge(a, None) is Verdict.OK and judge(b, a) is Verdict.OK  # the ball moved
    assert judge(black, None) is Verdict.BLACK
    assert judge(s2, s1) is Verdict.FROZEN  # a still test card: the same picture twice


async def test_service_against_real_server_keeps_secrets(gst_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    good, bad = tmp_path / "good.secret", tmp_path / "bad.secret"
    good.write_text(f"admin:{PASSWORD}\n")
    bad.write_text("admin:Wrong-Pw-5512\n")
    for f in (good, bad):
        f.chmod(0o600)
    settings = CamerasConfig(spread=0.0, grab_timeout_s=20.0)
    cams = (CameraConfig(id="real", rtsp=f"{gst_server}/cam", credentials=good),
            CameraConfig(id="locked", rtsp=f"{gst_server}/cam", credentials=bad))
    uplink, clock = RecordingUplink(), ManualClock()
    svc = CameraService(cams, settings, real_probes(settings), uplink, clock, tmp_path / "cameras.json")
    await svc.start()
    for _ in range(2):
        clock.advance(60)
        await svc.run_cycle()
    assert uplink.states("real")[-1] == ("online", None)
    assert uplink.states("locked")[-1] == ("degraded", "auth_failed")
    clock.advance(60)
    await svc.report()
    await svc.flush()  # the state file's writer thread finishes before the test ends
    sent = json.dumps(uplink.sent)
    for secret in (PASSWORD, "Wrong-Pw-5512"):
        assert secret not in caplog.text and secret not in sent
