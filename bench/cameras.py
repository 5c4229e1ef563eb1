"""Bench: N camera twins on loopback probed by the real camera service; CPU and RSS of the prober.

    .venv/bin/python bench/cameras.py [--cameras 200] [--interval 60] [--scale 10] [--cycles 3]

The twins run in a child process (so their cost is not counted); this process runs only the camera
service with the real RTSP prober, the sim grabber (real ffmpeg on a local file) and a recording uplink.

Scaling: a real cycle is `--interval` seconds; the bench runs cycles `--scale` times faster (60 s ->
6 s) and divides the measured CPU share by `--scale` to give the figure for the real interval (CPU
per cycle is the same work whatever the interval). Frame grabs are off in the main figure (they run
every 20 min per camera, i.e. a few per cycle, and their CPU is in ffmpeg children, reported apart).
Goal (issue 5): <= 5 % of one core and <= +20 MB RSS over idle for 200 cameras every 60 s.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from agent.protocol.envelope import Envelope, MsgClass


class NullUplink:
    def __init__(self) -> None:
        self.count = 0

    async def send(self, cls: MsgClass, kind: str, data: dict[str, Any], ts_ms: int | None = None) -> Envelope:
        self.count += 1
        json.dumps(data)  # the serialisation cost the outbox would pay
        return Envelope("bench", self.count, ts_ms or 0, cls, kind, data)

    def send_nowait(self, *a: Any, **k: Any) -> Any:
        return asyncio.ensure_future(self.send(*a, **k))


async def serve(n: int) -> None:
    """Child process: n healthy twins (digest auth), ports printed as one JSON line, until stdin closes."""
    from sim.cameras import SimCamera

    cams = [await SimCamera(id=f"{i:020d}", onvif=False).start() for i in range(n)]
    print(json.dumps([[c.id, c.port, c.user, c.password] for c in cams]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for c in cams:
        await c.stop()


async def bench(args: argparse.Namespace, twins: list[list[Any]]) -> None:
    from agent.cameras.service import CameraService
    from agent.cameras.settings import CameraConfig, CamerasConfig
    from agent.clock import SystemClock
    from drivers.camera.base import CameraProbes
    from drivers.camera.grab import FfmpegGrabber
    from drivers.camera.onvif import HttpOnvifClient
    from drivers.camera.probe import TcpRtspProber
    from sim.cameras import SimLink

    me = psutil.Process(os.getpid())
    tmp = Path(tempfile.mkdtemp(prefix="bench-cameras-"))
    cams = []
    for cid, port, user, pw in twins:
        secret = tmp / f"{cid}.secret"
        secret.write_text(f"{user}:{pw}\n")
        secret.chmod(0o600)
        cams.append(CameraConfig(id=cid, rtsp=f"rtsp://127.0.0.1:{port}/Streaming/Channels/102",
                                 credentials=secret, frame_check=False))
    interval = args.interval / args.scale
    settings = CamerasConfig(interval_s=interval, spread=0.8, telemetry_s=interval * args.cycles)
    probes = CameraProbes(TcpRtspProber(), HttpOnvifClient(), FfmpegGrabber(), SimLink())
    uplink = NullUplink()
    svc = CameraService(tuple(cams), settings, probes, uplink, SystemClock(), tmp / "cameras.json")
    rss_idle = me.memory_info().rss
    await svc.start()
    cpu0, t0 = me.cpu_times(), time.monotonic()
    peak = rss_idle
    for _ in range(args.cycles):
        started = time.monotonic()
        await svc.run_cycle()
        peak = max(peak, me.memory_info().rss)
        await asyncio.sleep(max(0.0, started + interval - time.monotonic()))
    await svc.report()
    cpu1, t1 = me.cpu_times(), time.monotonic()
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    wall = t1 - t0
    share = used / wall
    counts = svc.fleet.counts()
    print(f"cameras            {args.cameras} (states after {args.cycles} cycles: {counts})")
    print(f"cycle              {interval:g} s bench = {args.interval:g} s real (scale {args.scale:g}x)")
    print(f"cpu per cycle      {used / args.cycles * 1000:.0f} ms")
    print(f"cpu, bench         {share * 100:.2f} % of one core")
    print(f"cpu, real interval {share / args.scale * 100:.2f} % of one core   (goal <= 5 %)")
    print(f"rss idle           {rss_idle / 2**20:.1f} MB")
    print(f"rss peak           {peak / 2**20:.1f} MB   (+{(peak - rss_idle) / 2**20:.1f} MB, goal <= +20 MB)")
    print(f"uplink messages    {uplink.count}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=200)
    ap.add_argument("--interval", type=float, default=60.0, help="the real probe interval being modelled")
    ap.add_argument("--scale", type=float, default=10.0, help="run cycles this many times faster")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(args.cameras)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        asyncio.run(bench(args, json.loads(child.stdout.readline())))
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(10)


if __name__ == "__main__":
    main()
