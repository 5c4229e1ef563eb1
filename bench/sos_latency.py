"""SOS latency: serial frame written -> alarm at the county subscriber, while 500 bands report positions.

    python -m bench.sos_latency [--wearers 500] [--presses 200] [--period 5]

The real agent runs as a subprocess (`village agent run`, profile sim) with a `socket://` gateway whose far
end is this script; a county subscriber on the same mosquitto timestamps each `sos` alarm. The arrival at
the subscriber comes after the broker's PUBACK to the agent, so the figure is an upper bound of
"frame written -> alarm PUBACKed". Baseline in the same run: a raw paho publish -> the same subscriber.
Goal (issue 4): p99 <= 50 ms.

The fake gateway's socket has TCP_NODELAY, as a serial-to-TCP bridge writes each frame when it has it:
with Nagle on, an SOS frame written while a position frame is still unacknowledged waits for the agent's
delayed ACK (about 40 ms) and reaches it merged with the next frames. `--nagle` puts that back, and
`--broker-nagle` runs mosquitto without `set_tcp_nodelay`, to reproduce the figures measured before.

Measured 2026-12-01 (2-core dev machine shared with other jobs, defaults): p50 2.2 ms, p99 6.8 ms (raw
publish baseline p99 1.0 ms); with `--nagle` p50 22 ms, p99 46 ms; `--nagle --broker-nagle` p99 49 ms;
`--broker-nagle` alone p99 8.3 ms (the broker's PUBACK to the agent is not on the measured path, and the
subscriber gets one alarm at a time, with nothing unacknowledged for Nagle to wait behind).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.wristband.events import BandAlarm
from drivers.wristband.watch import encode_alarm, encode_position, status_bits
from tests.agentproc import AgentProcess
from tests.support import Mosquitto, agent_config_dict, wait_until

LAT0, LON0 = 30.52, 114.31


def device(i: int) -> str:
    return f"{7000000000 + i}"


class Subscriber:
    def __init__(self, port: int) -> None:
        self.arrived: dict[str, float] = {}
        self.raw: dict[int, float] = {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-county")
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *a: c.subscribe([("vc/v1/box/+/up/alarm/#", 1), ("bench/raw", 1)])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if msg.topic == "bench/raw":
            self.raw[int(msg.payload)] = now
            return
        env = json.loads(msg.payload)
        if env["kind"] == "sos":
            self.arrived.setdefault(env["data"]["wearer"], now)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wearers", type=int, default=500)
    ap.add_argument("--presses", type=int, default=200)
    ap.add_argument("--period", type=float, default=5.0, help="position report period per band, s")
    ap.add_argument("--nagle", action="store_true", help="leave Nagle on on the fake gateway's socket")
    ap.add_argument("--broker-nagle", action="store_true", help="mosquitto without set_tcp_nodelay")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker", persistence=False, tcp_nodelay=not args.broker_nagle).start()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        config = agent_config_dict(
            work / "state", broker.url,
            gateway=[{"id": "gw1", "url": f"socket://127.0.0.1:{port}", "codec": "watch"}],
            wearer=[{"id": f"W{i}", "device": device(i)} for i in range(args.wearers)],
        )
        sub = Subscriber(broker.port)
        agent = AgentProcess(work, config)
        stop = threading.Event()
        try:
            agent.start()
            conn, _ = server.accept()
            if not args.nagle:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            lock = threading.Lock()

            def positions() -> None:  # every band reports once per period, spread evenly
                gap = args.period / args.wearers
                i = 0
                while not stop.is_set():
                    frame = encode_position(device(i % args.wearers), ts=time.time(),
                                            lat=LAT0 + (i % 97) * 1e-5, lon=LON0)
                    with lock:
                        conn.sendall(frame)
                    i += 1
                    time.sleep(gap)

            load = threading.Thread(target=positions, daemon=True)
            load.start()
            time.sleep(2 * args.period)  # let the load settle
            written: dict[str, float] = {}
            for i in range(args.presses):
                frame = encode_alarm(device(i), ts=time.time(), lat=LAT0, lon=LON0,
                                     status=status_bits(BandAlarm.SOS))
                with lock:
                    written[f"W{i}"] = time.perf_counter()
                    conn.sendall(frame)
                time.sleep(0.05)
            wait_until(lambda: len(sub.arrived) >= args.presses, timeout=60)
            # baseline: a raw paho publish from this process to the same subscriber
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            sent_raw: dict[int, float] = {}
            for i in range(args.presses):
                sent_raw[i] = time.perf_counter()
                pub.publish("bench/raw", str(i), qos=1).wait_for_publish(5)
                time.sleep(0.01)
            wait_until(lambda: len(sub.raw) >= args.presses, timeout=30)
            pub.loop_stop()
            stop.set()
            agent.terminate()
        finally:
            stop.set()
            agent.close()
            broker.stop()
    lat = [(sub.arrived[w] - t) * 1000 for w, t in written.items()]
    base = [(sub.raw[i] - t) * 1000 for i, t in sent_raw.items()]
    print(f"{args.presses} SOS presses while {args.wearers} bands report every {args.period:g} s "
          f"({args.wearers / args.period:.0f} frames/s); gateway socket Nagle {'on' if args.nagle else 'off'}, "
          f"broker set_tcp_nodelay {'false' if args.broker_nagle else 'true'}")
    print(f"  frame written -> sos alarm at the county: p50 {statistics.median(lat):.1f} ms  "
          f"p99 {pct(lat, 0.99):.1f} ms  max {max(lat):.1f} ms   goal p99 <= 50 ms")
    print(f"  baseline, raw paho publish -> same subscriber: p50 {statistics.median(base):.1f} ms  "
          f"p99 {pct(base, 0.99):.1f} ms")


if __name__ == "__main__":
    main()
