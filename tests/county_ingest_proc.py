"""Helpers for the county ingest tests: envelopes on their topics, a fast QoS 1 publisher, waiting on ingest,
and `IngestProcess`: `python -m county.ingest` as a child process (to kill -9)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

P = "vc/v1"
REPO = Path(__file__).resolve().parent.parent


def envelope(box: str, seq: int, cls: str, kind: str, data: dict[str, Any] | None = None,
             ts: int | None = None) -> tuple[str, bytes]:
    body = {"v": 1, "id": f"{box}:{seq}", "box": box, "seq": seq,
            "ts": ts if ts is not None else 1_763_900_000_000 + seq, "class": cls, "kind": kind, "data": data or {}}
    try:
        raw = json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: only its JSON escape can carry it
        raw = json.dumps(body).encode()
    return f"{P}/box/{box}/up/{cls}/{kind}", raw


def sos(box: str, seq: int, wearer: str = "w1", lat: float = 22.5, lon: float = 113.9, kind: str = "sos",
        ts: int | None = None) -> tuple[str, bytes]:
    return envelope(box, seq, "alarm", kind, {"wearer": wearer, "device": "band-1",
                                              "pos": {"lat": lat, "lon": lon, "fix_ts": 1, "acc_m": 5.0},
                                              "pos_stale": False, "raw": "frame"}, ts)


class Publisher:
    """A QoS 1 publisher that waits for every PUBACK."""

    def __init__(self, url: str, client_id: str = "") -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self._up = threading.Event()
        self.client.on_connect = lambda *a, **k: self._up.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._up.wait(10):
            raise TimeoutError("publisher did not connect")

    def publish(self, messages: list[tuple[str, bytes]], *, retain: bool = False, within_s: float = 60) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in messages]
        deadline = time.monotonic() + within_s
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("a message was not acknowledged by the broker")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def until(pred: Callable[[], Awaitable[Any]] | Callable[[], Any], within_s: float = 30.0) -> Any:
    """Wait until `pred()` (sync or async) is truthy, re-checking every 20 ms; TimeoutError after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within_s}s")
        await asyncio.sleep(0.02)


class IngestProcess:
    """`python -m county.ingest` in a child process; `start()` returns once it printed READY (subscribed)."""

    def __init__(self, db_url: str, broker_url: str, client_id: str, log: Path) -> None:
        self.args = [sys.executable, "-m", "county.ingest", "--db", db_url, "--broker", broker_url,
                     "--client-id", client_id]
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def start(self, within_s: float = 30) -> IngestProcess:
        err = self.log.open("a")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
        err.close()
        assert self.proc.stdout is not None
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.strip() == "READY":
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(within_s):
            self.kill()
            raise TimeoutError(f"ingest did not start: {self.log.read_text()[-2000:]}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(30)
        return self.proc.returncode
