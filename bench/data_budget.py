"""The 4G data budget (issue 14): a simulated village day, captured on the wire, batching off vs on.

    python -m bench.data_budget [--speed 1440] [--sos 100]

One village (bench/village_day.py: 50 wearers every 5 minutes, 20 cameras, heartbeat, one broadcast) goes through
the box's real outbox and link, over mutual TLS, to the county's mosquitto (docs/county/mosquitto.conf), through
a TCP proxy that counts the IP bytes of the box's connection both ways (Linux TCP_INFO on the proxy's socket:
TCP payload, i.e. TLS records, plus 52 bytes of IPv4 + TCP header per segment, pure ACKs and handshakes
included). Time runs `--speed` times faster than a real day (a day in a minute by default): the envelopes carry
the day's timestamps, the batch window is scaled with it. Cases, all in the same run:

- `main`: what the box sent before issue 14: single envelopes, no topic aliases, heartbeat 60 s, keepalive 30 s;
- `single`: `batching = false` with the new link defaults (topic aliases, heartbeat 240 s, keepalive 300 s);
- `batched`: the defaults (batching on, 60 s window, DEFLATE with the preset dictionary).

MQTT PINGs cannot be accelerated (paho's keepalive is in real seconds): the run uses a keepalive longer than
itself, and the PINGs a real day would have had are added from the day's gaps between publishes (a gap of g
seconds holds floor(g / keepalive) PINGs) times the measured cost of one PINGREQ/PINGRESP exchange.

Latency: after each day, a busy phase (the same traffic pattern at the same speed) with `--sos` alarms; each
is timed from `send()` to its arrival at a county subscriber on the broker (p50 / p99).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import Config, parse_config
from agent.link import Link
from agent.outbox import Outbox
from agent.protocol.batch import expand
from agent.protocol.envelope import MsgClass
from agent.service import InboundCommand
from bench.village_day import DAY_MS, day
from county.acl import parse_fleet, render
from tests.pki import CountyBroker, TestCA, tls_context
from tests.support import agent_config_dict

BOX = "village-042"
HDR = 52  # IPv4 + TCP with timestamps
args_verbose = False


def tcp_info(sock: socket.socket) -> tuple[int, int, int, int]:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    acked, received = struct.unpack_from("=QQ", raw, 120)
    segs_out, segs_in = struct.unpack_from("=II", raw, 136)
    return acked, received, segs_out, segs_in


class CountingProxy:
    """127.0.0.1:port -> the broker; counts the box side's IP bytes (up = box -> county)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.closed_up = self.closed_down = 0
        self.connections: list[tuple[int, int]] = []  # (up, down) per finished connection
        self._open: set[socket.socket] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @staticmethod
    def _bytes(sock: socket.socket) -> tuple[int, int]:
        acked, received, segs_out, segs_in = tcp_info(sock)
        return received + segs_in * HDR, acked + segs_out * HDR

    def totals(self) -> tuple[int, int]:
        up, down = self.closed_up, self.closed_down
        for s in self._open:
            with contextlib.suppress(OSError):
                u, d = self._bytes(s)
                up, down = up + u, down + d
        return up, down

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = sock._sock if hasattr(sock, "_sock") else sock  # asyncio's TransportSocket wraps it
        self._open.add(raw)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        last = (0, 0)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            nonlocal last
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                    last = self._bytes(raw)  # a reset closes the socket before we could read it at the end

        pumps = [asyncio.create_task(pump(reader, up_w)), asyncio.create_task(pump(up_r, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the bench is over
            for t in pumps:
                t.cancel()
            return
        try:
            u, d = self._bytes(raw)  # before anything is closed: the counts live with the socket
        except OSError:
            u, d = last
        self._open.discard(raw)
        self.closed_up += u
        self.closed_down += d
        self.connections.append((u, d))
        for w in (writer, up_w):
            with contextlib.suppress(OSError, RuntimeError):
                w.close()
        for t in pumps:
            t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


class County:
    """A county subscriber on the broker itself (not through the proxy): envelopes seen, alarm arrival times."""

    def __init__(self, broker: CountyBroker, ca: TestCA) -> None:
        self.ids: set[str] = set()
        self.alarms: dict[str, float] = {}
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="county-bench")
        self.client.tls_set_context(tls_context(ca, ca.client("county-console")))
        self.client.on_connect = lambda c, *a: c.subscribe("vc/v1/box/+/up/#", 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        for topic, payload in expand(msg.topic, bytes(msg.payload)):
            env_id = json.loads(payload)["id"]
            with self.lock:
                self.ids.add(env_id)
                if "/up/alarm/" in topic:
                    self.alarms[env_id] = now

    def command(self, payload: bytes) -> None:
        self.client.publish(f"vc/v1/box/{BOX}/cmd", payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class _Sink:
    def __init__(self) -> None:
        self.commands = 0

    async def on_command(self, msg: InboundCommand) -> None:
        self.commands += 1


@dataclass
class Case:
    name: str
    batching: bool
    aliases: bool
    heartbeat_s: int
    keepalive_s: int
    up: int = 0
    down: int = 0
    link_count: int = 0  # the link's own count (agent/uplink_usage.py), for comparison
    pings: int = 0
    messages: int = 0
    publishes: int = 0
    latencies: list[float] = field(default_factory=list)


def make_config(tmp: Path, case: Case, url: str, ca: TestCA, speed: float, **uplink: Any) -> Config:
    ident = ca.client(BOX)
    state = tmp / case.name
    state.mkdir()
    raw = agent_config_dict(state, url, box=BOX, mqtt={
        "ca": str(ca.pem), "cert": str(ident.cert), "key": str(ident.key), "keepalive_s": 3600,
        "backoff_min_s": 0.05}, uplink={"batching": case.batching, "topic_aliases": case.aliases,
                                        "batch_window_s": 60 / speed, **uplink})
    raw["box"]["groups"] = []
    return parse_config(raw)


async def feed(outbox: Outbox, msgs: list[Any], speed: float, t0_ms: int, *, sos: int = 0,
               sent: dict[str, float] | None = None) -> None:
    start = time.perf_counter()
    span = (msgs[-1].at_ms - msgs[0].at_ms) if msgs else 0
    sos_at = sorted(msgs[0].at_ms + span * (i + 0.5) / sos for i in range(sos)) if sos else []
    futures = []
    for m in msgs:
        while sos_at and sos_at[0] <= m.at_ms:
            at = sos_at.pop(0)
            await asyncio.sleep(max(0.0, (at - msgs[0].at_ms) / 1000 / speed - (time.perf_counter() - start)))
            t = time.perf_counter()
            env = await outbox.send(MsgClass.ALARM, "sos", {"wearer": "w-007", "device": "band-007"}, ts_ms=t0_ms + at)
            if sent is not None:
                sent[env.id] = t
        delay = (m.at_ms - msgs[0].at_ms) / 1000 / speed - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        futures.append(outbox.send_nowait(m.cls, m.kind, m.data, ts_ms=t0_ms + m.at_ms))
    await asyncio.gather(*futures)


async def run_case(tmp: Path, case: Case, broker: CountyBroker, ca: TestCA, speed: float, sos: int) -> None:
    proxy = CountingProxy(broker.port)
    await proxy.start()
    config = make_config(tmp, case, f"mqtts://127.0.0.1:{proxy.port}", ca, speed)
    county = County(broker, ca)
    # the group commit scaled like the batch window (20 ms on a box would be half a simulated minute here)
    outbox = Outbox(config.outbox_path, BOX, max_bytes=1 << 28, telemetry_ttl_s=86400 * 7,
                    commit_interval_s=min(0.02, 6 / speed))
    sink = _Sink()
    link = Link(config, outbox, sink)
    msgs = list(day(1, heartbeat_s=case.heartbeat_s))
    case.messages = len(msgs)
    tasks = [asyncio.create_task(outbox.run(lambda: None)), asyncio.create_task(link.run(lambda: None))]
    try:
        while link.state.value != "connected":
            await asyncio.sleep(0.01)
        broadcast_at = next(i for i, m in enumerate(msgs) if m.kind == "cmd")

        async def command_then() -> None:  # the day's one broadcast comes down before its receipts
            await asyncio.sleep((msgs[broadcast_at].at_ms - 1000) / 1000 / speed)
            await asyncio.to_thread(county.command, json.dumps({"cmd": "bc-1", "pad": "x" * 1500}).encode())
        down = asyncio.create_task(command_then())
        # the day ends now: the outbox expires telemetry older than its TTL by the envelopes' ts
        now_ms = int(time.time() * 1000)
        await feed(outbox, msgs, speed, now_ms - DAY_MS)
        await down
        while sum(outbox.depth().values()) or len(county.ids) < len(msgs):
            if args_verbose:
                print(case.name, outbox.depth(), len(county.ids), len(msgs), link.state, file=sys.stderr)
            await asyncio.sleep(0.5 if args_verbose else 0.05)
        case.up, case.down = proxy.totals()
        conn = link.current
        if conn is not None:
            conn.meter.sample(conn.client.socket())
        case.link_count = link.usage.month_bytes
        case.publishes = link.published if not case.batching else link.batches + sum(
            1 for m in msgs if m.cls <= MsgClass.RECEIPT)
        # the busy phase: 20 s of the same traffic with SOS alarms in it
        sent: dict[str, float] = {}
        busy = [m for m in msgs if 8 * 3_600_000 <= m.at_ms < 8 * 3_600_000 + 20_000 * speed]
        if args_verbose:
            print(case.name, "day done; busy phase", len(busy), file=sys.stderr)
        await feed(outbox, busy, speed, now_ms - 8 * 3_600_000, sos=sos, sent=sent)
        if args_verbose:
            print(case.name, "busy phase fed", len(sent), file=sys.stderr)
        while len(county.alarms.keys() & sent.keys()) < len(sent):
            if args_verbose:
                print(case.name, len(county.alarms.keys() & sent.keys()), len(sent), outbox.depth(), file=sys.stderr)
            await asyncio.sleep(0.5 if args_verbose else 0.01)
        case.latencies = sorted((county.alarms[k] - t) * 1000 for k, t in sent.items())
    finally:
        for t in reversed(tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        county.close()
        if proxy.server is not None:
            proxy.server.close()
    # PINGs a real day would have had: idle gaps between the day's publishes (sim time)
    times = sorted({m.at_ms // (60_000 if case.batching else 1) for m in msgs})
    unit = 60_000 if case.batching else 1
    gaps = [(b - a) * unit / 1000 for a, b in itertools.pairwise(times)] + [
        (DAY_MS - times[-1] * unit + times[0] * unit) / 1000]
    case.pings = sum(int(g // case.keepalive_s) for g in gaps)


async def ping_cost(tmp: Path, broker: CountyBroker, ca: TestCA) -> float:
    """IP bytes (both ways) of one PINGREQ/PINGRESP exchange over TLS, measured: an idle client with keepalive 1 s."""
    proxy = CountingProxy(broker.port)
    await proxy.start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ping-probe")
    client.tls_set_context(tls_context(ca, ca.client("ping-probe")))
    await asyncio.to_thread(client.connect, "127.0.0.1", proxy.port, 1)  # the proxy runs on this loop
    client.loop_start()
    await asyncio.sleep(1.5)
    a = sum(proxy.totals())
    await asyncio.sleep(6.0)
    b = sum(proxy.totals())
    client.loop_stop()
    client.disconnect()
    proxy.server.close()  # type: ignore[union-attr]
    return (b - a) / 6.0


async def reconnect_costs(tmp: Path, broker: CountyBroker, ca: TestCA, resumption: bool) -> list[int]:
    """IP bytes (both ways) of each of 4 connections of an idle link: TLS handshake, CONNECT, SUBSCRIBE, the
    retained state, then a cut (as a 4G drop) and the next one; with or without TLS session resumption."""
    proxy = CountingProxy(broker.port)
    await proxy.start()
    case = Case(f"tls-{resumption}", True, True, 240, 300)
    config = make_config(tmp, case, f"mqtts://127.0.0.1:{proxy.port}", ca, 1.0, tls_resumption=resumption)
    outbox = Outbox(config.outbox_path, BOX, max_bytes=1 << 20, telemetry_ttl_s=3600)
    link = Link(config, outbox, _Sink())
    tasks = [asyncio.create_task(outbox.run(lambda: None)), asyncio.create_task(link.run(lambda: None))]
    try:
        for n in range(4):
            while not (link.state.value == "connected" and link.reconnects == n + 1):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # its SUBACK and the state's PUBACK are in
            conn = link.current
            assert conn is not None
            sock = conn.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            while len(proxy.connections) < n + 1:
                await asyncio.sleep(0.01)
    finally:
        for t in reversed(tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        proxy.server.close()  # type: ignore[union-attr]
    return [u + d for u, d in proxy.connections]


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = TestCA(tmp / "pki")
        (tmp / "broker").mkdir()
        acl = render(parse_fleet({"boxes": {BOX: []}}))
        broker = CountyBroker(tmp / "broker", ca, acl)
        broker.start()
        try:
            per_ping = await ping_cost(tmp, broker, ca)
            cases = [Case("main", False, False, 60, 30), Case("single", False, True, 240, 300),
                     Case("batched", True, True, 240, 300)]
            for case in cases:
                await run_case(tmp, case, broker, ca, args.speed, args.sos)
            costs = {r: await reconnect_costs(tmp, broker, ca, r) for r in (False, True)}
        finally:
            broker.stop()
    print(f"village day x{args.speed:g} speed, TLS, IP bytes of the box's connection (proxy TCP_INFO); "
          f"one PING exchange = {per_ping:.0f} B")
    print("| case | envelopes | publishes | up KB | down KB | PINGs (KB) | total MB/day | x main | link's own count MB "
          "| SOS p50 / p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = None
    for c in cases:
        total = c.up + c.down + c.pings * per_ping
        base = base or total
        print(f"| {c.name} | {c.messages} | {c.publishes} | {c.up / 1e3:.0f} | {c.down / 1e3:.0f} | "
              f"{c.pings} ({c.pings * per_ping / 1e3:.0f}) | {total / 1e6:.3f} | {total / base:.3f} | "
              f"{c.link_count / 1e6:.3f} | {pct(c.latencies, 50):.1f} / {pct(c.latencies, 99):.1f} |")
    for resumed, cost in costs.items():
        print(f"a connection (TLS + CONNECT + SUBSCRIBE + state), TLS resumption {'on' if resumed else 'off'}: "
              + ", ".join(f"{b} B" for b in cost))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speed", type=float, default=1440.0, help="simulated seconds per real second")
    ap.add_argument("--sos", type=int, default=100, help="SOS alarms in each busy phase")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
