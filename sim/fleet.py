"""Fleet mode: N lightweight simulated boxes against one broker, and the county's side measuring them.

Each box is a real paho client speaking the contract: a retained `online` state with an `offline` will,
envelopes with `v`, `id` = box:seq, rising `seq`, `ts` when the thing happened, QoS 1; a heartbeat every
60 s and a position every 10 s (both divided by `speed`), with random phases.

Each box's outbox is an in-memory deque (bounded, oldest telemetry dropped first when full): enough for
load testing, where the process never restarts; the real agent's SQLite outbox is what keeps data across
power cuts, and it is tested elsewhere. A message leaves the deque only on the broker's PUBACK.

All boxes share one asyncio loop, and paho runs without threads: the loop watches every client's socket
(paho's documented external-loop API: `loop_read`/`loop_write`/`loop_misc`), so 1,000 boxes cost 1,000
sockets and no threads. First connects are spread over `ramp_s` with jitter, reconnects back off with
jitter, so a broker restart does not bring every box back in the same second.

The county side runs in its own process (so it does not share the boxes' interpreter lock): a subscriber
to `P/box/+/up/#` that counts messages per second and records end-to-end latency (arrival - envelope
`ts`, the same machine's clock) for the percentiles.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import multiprocessing as mp
import random
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.i18n import N_
from agent.protocol.topics import Topics

HEARTBEAT_S = 60.0
POSITION_S = 10.0
OUTBOX_MAX = 1000  # per box


def _state(state: str) -> str:
    """A retained box state as the contract has it (section 2: state, ts, version)."""
    return json.dumps({"state": state, "ts": int(time.time() * 1000), "version": "fleet"})


class FleetError(Exception):
    """The fleet could not run (no broker, bad URL)."""


@dataclass(frozen=True, slots=True)
class FleetOptions:
    boxes: int
    broker_url: str
    duration_s: float
    speed: float = 1.0
    ramp_s: float | None = None  # None: boxes / 200 per second, at least 1 s
    prefix: str = "vc/v1"
    seed: int = 1

    @property
    def ramp(self) -> float:
        return self.ramp_s if self.ramp_s is not None else max(1.0, self.boxes / 200)


@dataclass
class FleetResult:
    boxes: int
    connected: int  # boxes that were connected at the end
    connects: int  # connections made (first + reconnects)
    max_connects_per_s: int  # the worst second of the ramp: how hard the broker was hit
    sent: int  # PUBACKed
    queued_at_end: int
    received: int  # at the county
    unique: int
    msgs_per_s: float
    expected_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    window_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} ms"

        from agent.i18n import _

        return "\n".join((
            _("fleet: {boxes} boxes, {connected} connected at the end, {connects} connects (at most {rate}/s during "
              "the ramp)").format(boxes=self.boxes, connected=self.connected, connects=self.connects,
                                  rate=self.max_connects_per_s),
            _("county: {received} messages ({unique} unique) in {window:.0f} s = {rate:.1f} msg/s (expected "
              "{expected:.1f}); {sent} acked, {queued} still queued in boxes").format(
                received=self.received, unique=self.unique, window=self.window_s, rate=self.msgs_per_s,
                expected=self.expected_per_s, sent=self.sent, queued=self.queued_at_end),
            _("latency (envelope ts -> county): p50 {p50}, p95 {p95}, p99 {p99}, max {max}").format(
                p50=ms(self.p50_ms), p95=ms(self.p95_ms), p99=ms(self.p99_ms), max=ms(self.max_ms))))


class FleetBox:
    """One simulated box: a paho client on the shared loop and a small outbox."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.box = f"fleet-{index:05d}"
        self.seq = 0
        self.outbox: deque[tuple[str, bytes]] = deque()
        self.inflight: dict[int, tuple[str, bytes]] = {}
        self.connected = False
        self.acked = 0
        self.retry_at = 0.0
        self.started_connect = False
        self.started = time.monotonic()
        lat, lon = 21.9 + fleet.rng.random() * 0.2, 101.2 + fleet.rng.random() * 0.2
        self.pos = (lat, lon)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.box, protocol=mqtt.MQTTv311, clean_session=False)
        # the contract's state carries `ts` (the county refuses one without): the will's is the time it was set
        c.will_set(fleet.topics.state(self.box), _state("offline"), 1, True)
        c.max_inflight_messages_set(50)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_socket_open = fleet.socket_open
        c.on_socket_close = fleet.socket_close
        c.on_socket_register_write = fleet.register_write
        c.on_socket_unregister_write = fleet.unregister_write
        self.client = c

    # paho callbacks: all on the fleet's loop thread (no paho threads here)
    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            return
        self.connected = True
        self.fleet.connects += 1
        self.fleet.connect_times.append(time.monotonic())
        client.publish(self.fleet.topics.state(self.box), _state("online"), 1, True)
        # whatever paho held in flight it resends itself; hand it what waited in the outbox
        self.pump()

    def _on_disconnect(self, *_a: Any) -> None:
        self.connected = False

    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int, _rc: Any, _props: Any) -> None:
        if self.inflight.pop(mid, None) is not None:
            self.acked += 1

    def envelope(self, cls: str, kind: str, data: dict[str, Any]) -> None:
        self.seq += 1
        env = {"v": 1, "id": f"{self.box}:{self.seq}", "box": self.box, "seq": self.seq,
               "ts": int(time.time() * 1000), "class": cls, "kind": kind, "data": data}
        if len(self.outbox) >= OUTBOX_MAX:
            self.outbox.popleft()  # all fleet traffic is telemetry: the oldest goes first
            self.fleet.dropped += 1
        self.outbox.append((f"{self.fleet.topics.prefix}/box/{self.box}/up/{cls}/{kind}", json.dumps(env).encode()))
        self.pump()

    def pump(self) -> None:
        """Feed paho from the outbox only while connected, within a bounded window (mqtt-notes 8)."""
        while self.connected and self.outbox and len(self.inflight) < 50:
            topic, body = self.outbox.popleft()
            info = self.client.publish(topic, body, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.outbox.appendleft((topic, body))
                return
            self.inflight[info.mid] = (topic, body)

    def position(self) -> None:
        lat, lon = self.pos
        lat += (self.fleet.rng.random() - 0.5) * 1e-4
        lon += (self.fleet.rng.random() - 0.5) * 1e-4
        self.pos = (lat, lon)
        self.envelope("telemetry", "position", {"wearer": "W1", "device": "8800000001",
                                                "pos": {"lat": lat, "lon": lon, "fix_ts": int(time.time()),
                                                        "acc_m": 8}})

    def heartbeat(self) -> None:
        self.envelope("telemetry", "heartbeat", {"uptime_s": int(time.monotonic() - self.started),
                                                 "outbox": {"telemetry": len(self.outbox)}, "disk_free_mb": 1000,
                                                 "version": "fleet"})


class Fleet:
    def __init__(self, opts: FleetOptions) -> None:
        self.opts = opts
        parts = urlsplit(opts.broker_url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise FleetError(N_("{broker_url!r}: fleet mode takes mqtt://host:port", broker_url=opts.broker_url))
        self.host, self.port = parts.hostname, parts.port or 1883
        self.topics = Topics(opts.prefix)
        self.rng = random.Random(opts.seed)
        self.connects = 0
        self.connect_times: list[float] = []
        self.dropped = 0
        self.loop = asyncio.get_running_loop()
        self.boxes: list[FleetBox] = []
        self._by_sock: dict[int, FleetBox] = {}

    # ---- paho external loop glue ---------------------------------------------------------------

    def socket_open(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock, client.loop_read)

    def socket_close(self, _client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def register_write(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def unregister_write(self, _client: mqtt.Client, _ud: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    async def _misc(self) -> None:
        """paho's keepalive pings and reconnects (with jittered backoff) for every client, once a second."""
        while True:
            now = time.monotonic()
            for b in self.boxes:
                rc = b.client.loop_misc()
                if rc == mqtt.MQTT_ERR_NO_CONN and b.started_connect and now >= b.retry_at:
                    b.retry_at = now + 1 + self.rng.random() * 5
                    try:
                        b.client.reconnect()
                    except OSError:
                        pass  # the next attempt after the jittered delay
            await asyncio.sleep(1.0)

    # ---- the run -------------------------------------------------------------------------------

    async def run(self) -> FleetResult:
        opts = self.opts
        ctx = mp.get_context("spawn")
        results: mp.Queue[dict[str, Any]] = ctx.Queue()
        control: mp.Queue[dict[str, Any]] = ctx.Queue()
        ready = ctx.Event()
        county = ctx.Process(target=_county_process,
                             args=(self.host, self.port, opts.prefix, control, results, ready),
                             name="fleet-county", daemon=True)
        county.start()
        try:
            if not await asyncio.to_thread(ready.wait, 20):
                raise FleetError(N_("the county subscriber could not subscribe at {host}:{port}",
                                    host=self.host, port=self.port))
            return await self._run_boxes(control, results)
        finally:
            if county.is_alive():
                county.terminate()
            county.join(5)

    async def _run_boxes(self, control: mp.Queue[dict[str, Any]], results: mp.Queue[dict[str, Any]]) -> FleetResult:
        opts = self.opts
        pos_s, hb_s = POSITION_S / opts.speed, HEARTBEAT_S / opts.speed
        start = time.monotonic()
        heap: list[tuple[float, int, int]] = []  # (due, kind 0=connect 1=position 2=heartbeat, box index)
        for i in range(opts.boxes):
            self.boxes.append(FleetBox(self, i))
            heapq.heappush(heap, (start + opts.ramp * i / opts.boxes + self.rng.random() * 0.05, 0, i))
        end = start + opts.duration_s
        async with asyncio.TaskGroup() as tg:
            misc = tg.create_task(self._misc(), name="fleet.misc")
            while heap and heap[0][0] < end:
                due, kind, i = heapq.heappop(heap)
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                b = self.boxes[i]
                if kind == 0:
                    b.started_connect = True
                    try:
                        b.client.connect(self.host, self.port, keepalive=60)
                    except OSError as exc:
                        raise FleetError(N_("box {box} cannot reach {host}:{port}: {exc}",
                                            box=b.box, host=self.host, port=self.port, exc=exc)) from None
                    heapq.heappush(heap, (due + self.rng.random() * pos_s, 1, i))
                    heapq.heappush(heap, (due + self.rng.random() * hb_s, 2, i))
                elif kind == 1:
                    b.position()
                    heapq.heappush(heap, (due + pos_s, 1, i))
                else:
                    b.heartbeat()
                    heapq.heappush(heap, (due + hb_s, 2, i))
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            await asyncio.sleep(min(2.0, pos_s))  # the last messages reach the county
            misc.cancel()
        connected = sum(b.connected for b in self.boxes)
        for b in self.boxes:  # a clean stop says so itself (the will is only for an unclean one)
            b.client.publish(self.topics.state(b.box), _state("offline"), 1, True)
            b.client.disconnect()
            b.client.loop_write()
        county_stats = await asyncio.to_thread(_ask_county, control, results, start + opts.ramp)
        return self._result(county_stats, start, connected)

    def _result(self, c: dict[str, Any], start: float, connected: int) -> FleetResult:
        opts = self.opts
        lat = sorted(c["latencies_ms"])

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

        per_s: dict[int, int] = {}
        for t in self.connect_times:
            per_s[int(t - start)] = per_s.get(int(t - start), 0) + 1
        expected = opts.boxes * (opts.speed / POSITION_S + opts.speed / HEARTBEAT_S)
        return FleetResult(
            boxes=opts.boxes, connected=connected, connects=self.connects,
            max_connects_per_s=max(per_s.values(), default=0), sent=sum(b.acked for b in self.boxes),
            queued_at_end=sum(len(b.outbox) + len(b.inflight) for b in self.boxes), received=c["received"],
            unique=c["unique"], msgs_per_s=c["window_count"] / c["window_s"] if c["window_s"] else 0.0,
            expected_per_s=expected, p50_ms=pct(0.50), p95_ms=pct(0.95), p99_ms=pct(0.99),
            max_ms=lat[-1] if lat else None, window_s=c["window_s"], extra={"dropped": self.dropped},
        )


def _ask_county(control: mp.Queue[dict[str, Any]], results: mp.Queue[dict[str, Any]],
                window_from: float) -> dict[str, Any]:
    control.put({"stop": True, "window_from_wall": time.time() - (time.monotonic() - window_from)})
    return results.get(timeout=60)


def _county_process(host: str, port: int, prefix: str, control: mp.Queue[dict[str, Any]],
                    results: mp.Queue[dict[str, Any]], ready: Any) -> None:
    """The county subscriber (a child process): counts and latencies until told to stop."""
    import threading

    topics = Topics(prefix)
    arrivals: list[tuple[float, float]] = []  # (arrival wall s, latency ms)
    ids: set[str] = set()
    received = 0
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal received
        now = time.time()
        try:
            env = json.loads(msg.payload)
            ts, env_id = env["ts"], env["id"]
        except (ValueError, KeyError, TypeError):
            return
        with lock:
            received += 1
            ids.add(env_id)
            arrivals.append((now, now * 1000 - ts))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-county", protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(topics.all_up(), 1)
    client.on_subscribe = lambda *_a: ready.set()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    msg = control.get()
    client.disconnect()
    client.loop_stop()
    w0 = msg["window_from_wall"]
    with lock:
        window = [a for a in arrivals if a[0] >= w0]
        span = (window[-1][0] - w0) if window else 0.0
        results.put({"received": received, "unique": len(ids), "latencies_ms": [a[1] for a in window],
                     "window_count": len(window), "window_s": span})


async def run_fleet(opts: FleetOptions) -> FleetResult:
    if opts.boxes < 1:
        raise FleetError(N_("--boxes must be >= 1"))
    return await Fleet(opts).run()
