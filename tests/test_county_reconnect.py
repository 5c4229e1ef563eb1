"""The county console across a broker restart: every listening command subscribes again and says so.

A real mosquitto is killed (SIGKILL) and started again on the same port while `watch`, `push --wait` and
`status` listen. Each test waits on what the console prints (or on its real client), never on a clock.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.keys import new_keypair
from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.topics import Topics
from county import status as status_mod
from county.console import CountyClient
from tests.support import Collector, Mosquitto, wait_until

REPO = Path(__file__).resolve().parent.parent
T = Topics()
LOST, BACK = "lost connection to broker", "subscribed again to"


class Console:
    """`python -m agent.cli county ...` as a subprocess; stdout and stderr lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "county", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[bytes] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out.append), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr,
                                                                  lambda b: self.err.append(b.decode())), daemon=True)]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, sink: Any) -> None:
        for line in iter(stream.readline, b""):
            sink(line)

    def wait_err(self, text: str, timeout: float = 30.0) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and not any(text in line for line in self.err):
                raise AssertionError(f"console exited ({self.proc.returncode}) without {text!r}: {self.err}")
            return next((line for line in self.err if text in line), None)
        return str(wait_until(found, timeout))

    def finish(self, timeout: float = 30.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for t in self._readers:
            t.join(10)
        return rc


def restart(broker: Mosquitto, console_err: Any) -> None:
    """Kill the broker, wait until the console noticed, start it again on the same port."""
    broker.kill()
    console_err(LOST)
    broker.start()


def test_watch_receives_again_after_the_broker_restarts(broker: Mosquitto) -> None:
    watch = Console("watch", "--count", "1", "--broker", broker.url)
    try:
        watch.wait_err("watching")
        restart(broker, watch.wait_err)
        back = watch.wait_err(BACK)
        assert "1 topic filter(s)" in back and broker.url.removeprefix("mqtt://") in back
        pub = Collector(broker.url, topics=[]).start()
        try:
            sos = Envelope("box-a", 7, 1_763_900_000_123, MsgClass.ALARM, "sos", {"wearer": "W1"})
            pub.publish(T.up("box-a", MsgClass.ALARM, "sos"), sos.encode())
        finally:
            pub.stop()
        assert watch.finish() == 0
    finally:
        if watch.proc.poll() is None:
            watch.finish(0)
    assert len(watch.out) == 1 and b"box-a  alarm/sos  #7" in watch.out[0]
    lost = next(line for line in watch.err if LOST in line)
    assert lost.startswith("village county watch: ") and "reconnecting" in lost
    assert sum(LOST in line for line in watch.err) == 1  # one line per outage, not one per retry


def test_push_wait_hears_receipts_after_the_broker_restarts(broker: Mosquitto, collector: Collector,
                                                             tmp_path: Path) -> None:
    key, _pub = new_keypair("county-2026", tmp_path / "keys")
    collector.publish(T.state("box-a"), json.dumps({"state": "online", "ts": 0, "groups": ["town-menglou"]}),
                      retain=True)
    push = Console("push", "--broker", broker.url, "--key", str(key), "--kid", "county-2026",
                   "--to", "group:town-menglou", "--text", "停水", "--id", "w-1", "--wait", "120", "--json")
    try:
        push.wait_err("published broadcast.play w-1")
        restart(broker, push.wait_err)
        push.wait_err(BACK)
        box = Collector(broker.url, topics=[]).start()
        try:
            for seq, state in ((1, "received"), (2, "finished")):
                env = Envelope("box-a", seq, 1_763_900_000_000 + seq, MsgClass.RECEIPT, "cmd",
                               {"cmd": "w-1", "state": state})
                box.publish(T.up("box-a", MsgClass.RECEIPT, "cmd"), env.encode())
        finally:
            box.stop()
        rc = push.finish()  # returns at once: the one expected box reached a final state (not after 120 s)
    finally:
        if push.proc.poll() is None:
            push.finish(0)
    assert rc == 0
    assert [json.loads(line) for line in push.out] == [
        {"box": "box-a", "cmd": "w-1", "state": "finished", "reason": None, "ts": 1_763_900_000_002}]
    assert any("box-a finished: 1 of 1 box(es) answered, 1 final" in line for line in push.err)
    assert any("every box reached a final state" in line for line in push.err)
    assert any(line.startswith("village county push: ") and LOST in line for line in push.err)


def test_status_collects_after_the_broker_restarts(broker: Mosquitto, collector: Collector, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clients: list[Any] = []
    subscribed = threading.Event()
    topics_seen: list[str] = []

    class Observed(CountyClient):  # the real client; the test only learns when it subscribed and what arrived
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            clients.append(self)

        def subscribe(self, *a: Any, **kw: Any) -> None:
            super().subscribe(*a, **kw)
            subscribed.set()

        def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
            super()._on_message(client, userdata, msg)
            topics_seen.append(msg.topic)

    monkeypatch.setattr(status_mod, "CountyClient", Observed)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    collector.publish(T.state("lhk-a-001"), json.dumps({"state": "online", "ts": 1_763_900_000}), retain=True)
    p = argparse.ArgumentParser()
    status_mod.add_arguments(p)
    args = p.parse_args(["--broker", broker.url, "--db", str(tmp_path / "s.db"), "--listen", "600", "--json"])
    out, stop, rc = io.StringIO(), threading.Event(), []
    runner = threading.Thread(target=lambda: rc.append(status_mod.status_main(args, out, stop)), name="status")
    runner.start()
    try:
        assert subscribed.wait(20)
        restart(broker, lambda text: wait_until(lambda: text in err.getvalue(), 30))
        wait_until(lambda: BACK in err.getvalue(), 30)
        hb = Envelope("lhk-a-001", 5, 1_763_900_001_000, MsgClass.TELEMETRY, "heartbeat",
                      {"uptime_s": 9, "outbox": {"depth": {"alarm": 0, "event": 3, "telemetry": 4}},
                       "disk_free_mb": 100, "version": "0.1.0"})
        pub = Collector(broker.url, topics=[]).start()
        try:
            pub.publish(T.up("lhk-a-001", MsgClass.TELEMETRY, "heartbeat"), hb.encode())
        finally:
            pub.stop()
        wait_until(lambda: T.up("lhk-a-001", MsgClass.TELEMETRY, "heartbeat") in topics_seen, 30)
    finally:
        stop.set()
        runner.join(30)
    assert rc == [0]
    (row,) = [json.loads(line) for line in out.getvalue().splitlines() if '"box"' in line]
    assert row["box"] == "lhk-a-001" and row["backlog"] == 7 and row["last_seen"] == 1_763_900_001_000
    assert clients[0].reconnects == 1
    lines = err.getvalue().splitlines()
    assert [line.split(" ", 4)[:3] for line in lines if LOST in line or BACK in line] == [
        ["village", "county", "status:"]] * 2
    assert "the broker keeps what arrives for this session" in next(line for line in lines if LOST in line)
