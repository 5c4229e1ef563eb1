"""Live broadcast: mouth-to-speaker latency, the box's CPU and memory while playing, bytes on the wire.

Everything real but the microphone and the loudspeaker: mosquitto on a free port, the box composed as the
agent composes it (link, router, broadcast service, live player, libopus) with the loudspeaker twin that
notes when each PCM chunk reached the output, and the county side packetizing 20 ms Opus frames into
signed 60 ms packets with the server's own code (county.live.LiveSession), each published the moment
its last frame was spoken. Not in the figure: the browser's capture and encode and the WebSocket hop
(a few ms on a LAN), and the output's own buffer after the chunk is handed over (aplay: ~40 ms lead
plus its buffer).

    .venv/bin/python bench/live.py [--clicks 50] [--delay-ms 200]

1. latency: a click every second; for each click, (time its first sample reached the output) - (time it
   was spoken); p50/p95 over the clicks, on loopback and with `--delay-ms` added by the netem proxy
   (sim/netem.py) between the box and the broker. Goal p95 <= 1.0 s, moonshot 0.5 s.
2. CPU and RSS of the agent as a child process (`village agent run`, sim profile: the live output is
   NullSink, the decode still runs) over one session vs. the same agent idle for as long, in the same
   run. Goal <= 15 % of one core, +20 MB.
3. bytes per minute of speech: MQTT payload (and with the per-message MQTT header), from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from agent.opus import Encoder  # noqa: E402
from county.live import LiveSession, new_session_id  # noqa: E402
from sim.live_audio import click_train, find_clicks  # noqa: E402
from sim.netem import NetemProxy  # noqa: E402
from tests.live_support import Box, County, box_config, county_keypair, live_data, running  # noqa: E402
from tests.support import Collector, Mosquitto  # noqa: E402

RATE = 48000
FRAME = RATE // 50  # 20 ms
EVERY_S = 1.0  # longer than any latency measured, so each output click belongs to one input click


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


async def speak(session: LiveSession, pcm: bytes, publish: Any) -> tuple[float, int, int]:
    """Real-time: frame i is spoken by t0 + (i+1) * 20 ms, then encoded and packetized. (t0, payload bytes,
    messages)."""
    enc = Encoder(RATE, 1)
    step = FRAME * 2
    frames = [pcm[i:i + step] for i in range(0, len(pcm) - step + 1, step)]
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    t0_loop = loop.time()
    sent = n = 0
    for i, f in enumerate(frames):
        await asyncio.sleep(max(0.0, t0_loop + (i + 1) * 0.02 - loop.time()))
        pkt = session.add_frame(enc.encode(f))
        if pkt is not None:
            publish(pkt)
            sent, n = sent + len(pkt), n + 1
    last = session.flush()
    if last is not None:
        publish(last)
        sent, n = sent + len(last), n + 1
    publish(session.end_packet())
    return t0, sent, n


def output_times(box: Box, clicks_out: list[float]) -> list[float]:
    """Monotonic time each output click (s into the output stream) was handed to the output."""
    marks = box.speaker.sample_times()
    out = []
    for c in clicks_out:
        idx = int(c * RATE)
        start, t = max((m for m in marks if m[0] <= idx), key=lambda m: m[0])
        out.append(t + (idx - start) / RATE)
    return out


async def latency_run(clicks: int, delay_ms: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start()
        collector = Collector(broker.url).start()
        key, pub = county_keypair(tmp)
        try:
            async with NetemProxy("127.0.0.1", broker.port, latency_ms=delay_ms) as proxy:
                box = Box(box_config(tmp, proxy.url if delay_ms else broker.url, pub, live_silence_s=3.0))
                county = County(collector, key)
                times = [0.5 + i * EVERY_S for i in range(clicks)]
                pcm = click_train(times, times[-1] + 0.6)
                session = LiveSession(new_session_id(), str(uuid.uuid4()), "vc/v1")
                async with running(box, collector):
                    county.send("broadcast.live", {**live_data(session.session, session.key, max_s=600),
                                                   "key": session.public_key()}, cmd_id=session.cmd_id)
                    await county.wait(session.cmd_id, "started", within=30)
                    topic = session.topic
                    t0, sent, n = await speak(session, pcm,
                                              lambda p: collector.client.publish(topic, p, qos=0))
                    finished = await county.wait(session.cmd_id, "finished", within=60)
        finally:
            collector.stop()
            broker.stop()
    heard = output_times(box, find_clicks(box.speaker.pcm()))
    lat = []
    for c in times:  # each click to the output click within one spacing after it was spoken (a lost one: none)
        match = [t - (t0 + c) for t in heard if 0 <= t - (t0 + c) < EVERY_S]
        if match:
            lat.append(match[0])
    if not lat:
        raise SystemExit(f"no click came out: {finished}")
    speech_s = len(pcm) / 2 / RATE
    header = n * (2 + 2 + len(topic))  # fixed header + remaining length (2 bytes at these sizes) + topic
    return {"heard": len(lat), "p50": statistics.median(lat), "p95": pct(lat, 95), "min": min(lat), "max": max(lat),
            "bytes_min": sent / speech_s * 60, "wire_min": (sent + header) / speech_s * 60,
            "packets_s": n / speech_s, "receipt": finished}


def agent_toml(state: Path, url: str, pub: Path) -> str:
    return f"""
[box]
id = "bench-live"
profile = "sim"
state_dir = "{state}"
heartbeat_s = 3600

[mqtt]
url = "{url}"

[trust.keys]
county-test = "{pub}"

[broadcast]
warmup_s = 0.0
chime = ""
tail_s = 0.0
off_delay_s = 0.0
live_silence_s = 3.0
"""


async def cpu_run(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start()
        collector = Collector(broker.url).start()
        key, pub = county_keypair(tmp)
        (tmp / "state").mkdir()
        cfg = tmp / "agent.toml"
        cfg.write_text(agent_toml(tmp / "state", broker.url, pub))
        log = (tmp / "agent.log").open("wb")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.cli", "agent", "run", "-c", str(cfg),
                                                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            await asyncio.to_thread(collector.wait_for, lambda ms: any(
                m.topic.endswith("bench-live/state") and b"online" in m.payload for m in ms), 60)
            p = psutil.Process(proc.pid)
            await asyncio.sleep(2.0)  # settle after start
            c0, w0 = p.cpu_times(), time.monotonic()
            await asyncio.sleep(seconds)
            c1, w1 = p.cpu_times(), time.monotonic()
            idle_cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0)
            rss_idle = p.memory_info().rss
            county = County(collector, key, box="bench-live")
            session = LiveSession(new_session_id(), str(uuid.uuid4()), "vc/v1")
            county.send("broadcast.live", {**live_data(session.session, session.key, max_s=600),
                                           "key": session.public_key()}, cmd_id=session.cmd_id)
            await county.wait(session.cmd_id, "started", within=30)
            pcm = click_train([0.5 + i * 0.4 for i in range(int(seconds / 0.4) - 2)], seconds)
            rss_peak = [rss_idle]

            async def sample() -> None:
                while True:
                    rss_peak.append(p.memory_info().rss)
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            c0, w0 = p.cpu_times(), time.monotonic()
            await speak(session, pcm, lambda x: collector.client.publish(session.topic, x, qos=0))
            c1, w1 = p.cpu_times(), time.monotonic()
            sampler.cancel()
            await county.wait(session.cmd_id, "finished", within=30)
            play_cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0)
        finally:
            proc.terminate()
            await proc.wait()
            collector.stop()
            broker.stop()
    return {"idle_cpu": idle_cpu, "play_cpu": play_cpu, "rss_idle": rss_idle / 2**20,
            "rss_peak": max(rss_peak) / 2**20}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=50)
    ap.add_argument("--delay-ms", type=float, default=200.0)
    ap.add_argument("--cpu-seconds", type=float, default=20.0)
    args = ap.parse_args()
    print(f"mouth-to-speaker latency over {args.clicks} clicks (click spoken -> PCM handed to the output)")
    runs = {}
    for delay in (0.0, args.delay_ms):
        r = runs[delay] = await latency_run(args.clicks, delay)
        pk = r["receipt"]["packets"]
        print(f"  +{delay:.0f} ms: {r['heard']}/{args.clicks} clicks heard, "
              f"p50 {r['p50'] * 1000:.0f} ms, p95 {r['p95'] * 1000:.0f} ms "
              f"(min {r['min'] * 1000:.0f}, max {r['max'] * 1000:.0f}); jitter target {r['receipt']['jitter_ms']} ms,"
              f" packets {pk['received']} received, {pk['lost']} lost, {pk['late']} late")
    r0 = runs[0.0]
    print(f"wire: {r0['bytes_min'] / 1024:.0f} KiB/min of MQTT payload ({r0['wire_min'] / 1024:.0f} KiB/min with MQTT "
          f"headers), {r0['packets_s']:.1f} messages/s")
    c = await cpu_run(args.cpu_seconds)
    print(f"agent process over {args.cpu_seconds:.0f} s: CPU idle {c['idle_cpu'] * 100:.1f} % of one core, "
          f"playing {c['play_cpu'] * 100:.1f} % (+{(c['play_cpu'] - c['idle_cpu']) * 100:.1f}); RSS idle "
          f"{c['rss_idle']:.1f} MiB, peak while playing {c['rss_peak']:.1f} MiB "
          f"(+{c['rss_peak'] - c['rss_idle']:.1f})")


if __name__ == "__main__":
    asyncio.run(main())
