"""`village county serve` as a process, for the parts this module set adds to it: an SOS that nobody
acknowledges reaches the `[alarms] webhook` (escalation runs inside serve), and an open event stream does
not hold SIGTERM up (the hub is closed first, so the stream ends and the server exits 0)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.support import Collector, Mosquitto, county_serve, free_port, wait_port
from tests.test_county_api_escalation import Receiver
from tests.test_county_serve import PASSWORD, setup


def sos(box: str, seq: int) -> dict[str, object]:
    return {"v": 1, "id": f"{box}:{seq}", "box": box, "seq": seq, "ts": int(time.time() * 1000), "class": "alarm",
            "kind": "sos", "data": {"wearer": "w-7", "device": "d-7",
                                    "pos": {"lat": 21.95, "lon": 101.25, "fix_ts": None, "acc_m": None},
                                    "pos_stale": False, "raw": "x"}}


def test_serve_escalates_an_unacknowledged_sos_and_stops_with_a_stream_open(tmp_path: Path,
                                                                            broker: Mosquitto) -> None:
    rx = Receiver([500])  # fails once: serve's escalation retries (1 s backoff)
    port = free_port()
    cfg = setup(tmp_path, broker, port)
    with cfg.open("a", encoding="utf-8") as f:
        f.write(f'[alarms]\nescalate_after_s = 1\nwebhook = "{rx.url}"\nwebhook_retries = 3\n')
    proc = county_serve(cfg)
    try:
        wait_port(port, 30)
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/api/v1/session", json={"username": "li", "password": PASSWORD},
                           timeout=30).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        lines: list[str] = []
        connected, ended = threading.Event(), threading.Event()

        def read_stream() -> None:
            try:
                with httpx.stream("GET", f"{base}/api/v1/events", headers=headers, timeout=60) as r:
                    for line in r.iter_lines():
                        lines.append(line)
                        if line == ": connected":
                            connected.set()
            except httpx.HTTPError as exc:  # cut off instead of ended: the assertion below says so
                lines.append(f"ERROR {type(exc).__name__}")
                return
            ended.set()

        reader = threading.Thread(target=read_stream, daemon=True)
        reader.start()
        assert connected.wait(30)
        box = Collector(broker.url, topics=[]).start()
        try:
            box.publish("vc/v1/box/lhk-menglou-001/up/alarm/sos", json.dumps(sos("lhk-menglou-001", 1)))
        finally:
            box.stop()
        bodies = rx.wait(2, timeout=30)
        assert bodies[1]["alarm"]["id"] == "lhk-menglou-001:1" and bodies[1]["escalation"] == 1
        assert bodies[1]["alarm"]["box_name"] == "勐楼村委会广播站"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reader.join(30)
        assert ended.is_set(), lines[-3:]  # the response completed: the stream was ended, not cut off
        assert "event: alarm" in lines  # the SOS reached the stream before
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "graceful shutdown exceeded" not in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rx.close()

