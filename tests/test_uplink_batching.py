"""Uplink batches (issue 14) end to end: the box's real outbox and link, a real mosquitto, the real county ingest
on SQLite and PostgreSQL. Every envelope stored once with the bytes it would have had alone; a batch delivered
twice stored once; alarms never wait for a batch; `batching = false` sends exactly the single envelopes."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from agent.link import BATCH_INFLIGHT
from agent.outbox import Outbox
from agent.protocol.batch import parse_batch_topic, unpack
from agent.protocol.envelope import Envelope, MsgClass
from county.ingest import Ingest, IngestConfig
from county.store import Database
from county.store.tables import messages, quarantine
from tests.county_ingest_proc import Publisher
from tests.support import Mosquitto, wait_until
from tests.test_link import RecordingSink, agent_core, config_for

A, R, E, T = MsgClass.ALARM, MsgClass.RECEIPT, MsgClass.EVENT, MsgClass.TELEMETRY


class Wire:
    """A county-side subscriber that keeps every message as it came off the broker (batches not unpacked)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="wire", clean_session=True)
        self.client.on_connect = lambda c, *a: c.subscribe("vc/v1/box/+/up/#", 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def envelopes(self) -> list[tuple[str, bytes]]:
        """(single topic or batch topic, envelope bytes) in arrival order."""
        out = []
        for topic, payload in self.snapshot():
            if parse_batch_topic(topic):
                out += [(topic, body) for body in unpack(payload)]
            else:
                out.append((topic, payload))
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def until(pred: Any, timeout: float = 30.0) -> Any:
    return await asyncio.to_thread(wait_until, pred, timeout)


async def test_a_batch_round_trips_into_the_county_stored_once_same_ids_and_bytes(
        tmp_path: Path, broker: Mosquitto, db_url: str) -> None:
    db = await Database.open(db_url)
    ingest = Ingest(IngestConfig(urls=[broker.url], client_id="county-batch"), db, None)
    await ingest.start()
    await ingest.wait_subscribed()
    wire = Wire(broker.url)
    config = config_for(tmp_path, broker.url, uplink={"batch_window_s": 0.3})
    try:
        async with agent_core(config) as (outbox, link):
            sent = [await outbox.send(T if i % 4 else E, "position" if i % 4 else "camera",
                                      {"wearer": f"w-{i % 7}", "i": i, "text": "村村响 ünïcode"}) for i in range(300)]
            await until(lambda: outbox.depth()[T] + outbox.depth()[E] == 0)
            assert link.batches >= 2 and link.batches < 50, "hundreds of envelopes went in a few batches"
        await until(lambda: ingest.stats["stored"] >= len(sent) and len(wire.envelopes()) >= len(sent))
        batches = [(t, p) for t, p in wire.snapshot() if parse_batch_topic(t)]
        assert batches and all(t.endswith(("/up/batch/telemetry", "/up/batch/event")) for t, _ in batches)
        assert not [t for t, _ in wire.snapshot() if not parse_batch_topic(t)], "nothing went unbatched"

        async def stored() -> dict[str, str]:
            async with db.connect() as conn:
                return {r.id: r.raw for r in (await conn.execute(select(messages.c.id, messages.c.raw))).all()}
        rows = await stored()
        # the same ids, and byte for byte what the box would have sent as single envelopes (the outbox row)
        assert rows == {env.id: env.encode().decode() for env in sent}

        # a batch delivered twice (paho resends after a reconnect) is stored once
        before = dict(ingest.stats)
        pub = Publisher(broker.url)
        try:
            pub.publish([batches[0], batches[0]])
        finally:
            pub.close()
        n = len(unpack(batches[0][1]))
        await until(lambda: ingest.stats["acked"] >= before["acked"] + 2)
        assert await stored() == rows
        assert ingest.stats["duplicates"] - before["duplicates"] == 2 * n
        assert ingest.stats["stored"] == before["stored"]
    finally:
        wire.close()
        await ingest.close()
        await db.close()


async def test_a_bad_batch_is_quarantined_whole_and_a_bad_envelope_inside_alone(
        tmp_path: Path, broker: Mosquitto) -> None:
    from agent.protocol.batch import pack

    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'county.db'}")
    ingest = Ingest(IngestConfig(urls=[broker.url], client_id="county-bad"), db, None)
    await ingest.start()
    await ingest.wait_subscribed()
    good = Envelope("box-1", 1, 1_763_900_000_000, T, "position", {"wearer": "w"}).encode()
    foreign = Envelope("box-2", 2, 1_763_900_000_000, T, "position", {"wearer": "w"}).encode()
    alarm = Envelope("box-1", 3, 1_763_900_000_000, A, "sos", {"wearer": "w"}).encode()
    pub = Publisher(broker.url)
    try:
        pub.publish([("vc/v1/box/box-1/up/batch/telemetry", pack([good, foreign, alarm])),
                     ("vc/v1/box/box-1/up/batch/telemetry", b"\x01\x01not deflate"),
                     ("vc/v1/box/box-1/up/batch/telemetry", b"\x07\x01"),
                     ("vc/v1/box/box-1/up/batch/event", pack([b"{not json"]))])
        await until(lambda: ingest.stats["acked"] >= 4)
        async with db.connect() as conn:
            ids = [r[0] for r in (await conn.execute(select(messages.c.id))).all()]
            reasons = [r[0] for r in (await conn.execute(select(quarantine.c.reason))).all()]
        assert ids == ["box-1:1"], "the good envelope is stored; the box-2 one and the alarm in a batch are not"
        assert sorted(reasons) == sorted([
            "box box-2 on the topic of box box-1",  # each envelope inside is checked as if it came alone
            "alarm/sos on the topic of telemetry/sos",  # an alarm is never in a batch: refused, not stored
            "uplink batch: not DEFLATE: Error -3 while decompressing data: invalid block type",
            "uplink batch: unsupported batch format version 7",
            "not an envelope: not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"])
    finally:
        pub.close()
        await ingest.close()
        await db.close()


async def test_an_alarm_raised_while_a_batch_fills_reaches_the_county_before_it(
        tmp_path: Path, broker: Mosquitto) -> None:
    wire = Wire(broker.url)
    # a window far longer than the test: the batch goes only when it is full (batch_max_count)
    config = config_for(tmp_path, broker.url, uplink={"batch_window_s": 3600, "batch_max_count": 50})
    try:
        async with agent_core(config) as (outbox, link):
            telemetry = [await outbox.send(T, "position", {"i": i}) for i in range(20)]  # the batch is filling
            await until(lambda: sum(len(b.rows) for b in _building(link)) == 20)
            alarm = await outbox.send(A, "sos", {"wearer": "w-1"})
            receipt = await outbox.send(R, "cmd", {"cmd": "c1", "state": "received"})
            await until(lambda: len(wire.snapshot()) >= 2)
            assert [t for t, _ in wire.snapshot()] == ["vc/v1/box/box-1/up/alarm/sos", "vc/v1/box/box-1/up/receipt/cmd"]
            telemetry += [await outbox.send(T, "position", {"i": i}) for i in range(20, 50)]  # fills it
            await until(lambda: len(wire.envelopes()) >= 52)
        got = wire.envelopes()
        assert [json.loads(b)["id"] for _, b in got] == [alarm.id, receipt.id] + [e.id for e in telemetry]
        assert [b for _, b in got[:2]] == [alarm.encode(), receipt.encode()]
    finally:
        wire.close()


def _building(link: Any) -> list[Any]:
    conn = link.current
    return list(conn.building.values()) if conn is not None else []


async def test_batching_false_sends_exactly_todays_envelopes(tmp_path: Path, broker: Mosquitto) -> None:
    wire = Wire(broker.url)
    config = config_for(tmp_path, broker.url, uplink={"batching": False})
    try:
        async with agent_core(config) as (outbox, link):
            plan = [T, E, R, A, T, T] * 10
            sent = [await outbox.send(cls, f"k{i % 3}", {"i": i}) for i, cls in enumerate(plan)]
            await until(lambda: len(wire.snapshot()) >= len(sent))
            assert link.batches == 0
        got = wire.snapshot()
        # one message per envelope, on its contract topic, byte for byte the envelope (topic aliases, which the
        # broker resolves, change nothing a subscriber sees)
        assert sorted(got) == sorted((f"vc/v1/box/box-1/up/{e.cls.wire}/{e.kind}", e.encode()) for e in sent)
    finally:
        wire.close()


async def test_topic_aliases_are_used_and_batches_in_flight_stay_bounded(tmp_path: Path, broker: Mosquitto) -> None:
    """A telemetry backlog drains as at most BATCH_INFLIGHT batches in flight (each is up to batch_max_bytes
    of envelopes ahead of an alarm in paho's FIFO); the topic of every publish after its first is an alias."""
    wire = Wire(broker.url)
    config = config_for(tmp_path, broker.url, uplink={"batch_max_bytes": 4096})
    seen_max = 0
    try:
        outbox = Outbox(config.outbox_path, config.box.id, max_bytes=10**8, telemetry_ttl_s=3600.0,
                        commit_interval_s=0.01)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(outbox.run(lambda: None))]
            await asyncio.gather(*[outbox.send_nowait(T, "position", {"i": i, "pad": "x" * 100}) for i in range(2000)])
            from agent.link import Link
            link = Link(config, outbox, RecordingSink())
            tasks.append(tg.create_task(link.run(lambda: None)))
            while sum(outbox.depth().values()):
                conn = link.current
                if conn is not None:
                    seen_max = max(seen_max, sum(f.batch for f in conn.inflight.values()))
                    aliases = len(conn.aliases)
                await asyncio.sleep(0.005)
            for t in tasks:
                t.cancel()
        assert 0 < seen_max <= BATCH_INFLIGHT
        assert aliases == 1, "one topic (the telemetry batch topic), sent once in full, then by its alias"
        assert len(wire.envelopes()) == 2000
        assert max(len(p) for _, p in wire.snapshot()) < 4096, "each batch holds at most 4 KiB of envelopes"
    finally:
        wire.close()


async def test_the_county_console_reads_batches_as_envelopes(tmp_path: Path, broker: Mosquitto) -> None:
    """`village county watch` / `status` read through CountyClient, which unpacks a batch byte for byte."""
    from county.console import BrokerSpec, CountyClient

    config = config_for(tmp_path, broker.url)
    with CountyClient(BrokerSpec.parse(broker.url), name="watch") as client:
        client.subscribe(["vc/v1/box/+/up/#"])
        async with agent_core(config) as (outbox, link):
            sent = [await outbox.send(T, "heartbeat", {"i": i}) for i in range(5)]
            await until(lambda: link.batches >= 1 and not outbox.depth()[T])
        got = [client.get(5) for _ in sent]
    assert [(m.topic, m.payload) for m in got if m] == [("vc/v1/box/box-1/up/telemetry/heartbeat", e.encode())
                                                        for e in sent]


@pytest.mark.parametrize("with_budget", [False, True])
async def test_the_monthly_budget_thins_telemetry_only_and_says_so(tmp_path: Path, broker: Mosquitto,
                                                                     with_budget: bool) -> None:
    wire = Wire(broker.url)
    uplink: dict[str, Any] = {"batch_window_s": 0.05, "thin_interval_s": 600}
    if with_budget:
        uplink["monthly_budget_mb"] = 0.000001  # one byte: the first connection's bytes are over it
    config = config_for(tmp_path, broker.url, uplink=uplink)
    try:
        async with agent_core(config) as (outbox, link):
            await until(lambda: link.usage.report()["sent_month"] > 0 or link.state.value == "connected")
            await until(lambda: link.state.value == "connected")
            link.current.meter.sample(link.current.client.socket())  # the counts now
            base = 1_763_900_000_000
            pos = [await outbox.send(T, "position", {"wearer": "w-1", "n": n}, ts_ms=base + n * 1000)
                   for n in range(10)]
            other = await outbox.send(T, "position", {"wearer": "w-2"}, ts_ms=base)
            alarm = await outbox.send(A, "sos", {"wearer": "w-1"}, ts_ms=base)
            event = await outbox.send(E, "camera", {"camera": "c1"}, ts_ms=base)
            await until(lambda: sum(outbox.depth().values()) == 0)
            report = link.usage.report()
        ids = {json.loads(b)["id"] for _, b in wire.envelopes()}
        assert {alarm.id, event.id, other.id, pos[0].id} <= ids
        if with_budget:
            assert ids & {p.id for p in pos} == {pos[0].id}, "one position of w-1 per thin_interval_s"
            assert report["thinning"] and report["thinned_month"] == 9
            assert outbox.counters["thinned.telemetry"] == 9
        else:
            assert {p.id for p in pos} <= ids and not report["thinning"] and report["budget_month"] is None
        assert report["measured"] and report["sent_day"] > 0 and report["received_day"] > 0
    finally:
        wire.close()


class Child:
    """tests/uplink_child.py as a process we can kill -9."""

    def __init__(self, config: Path) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", "tests.uplink_child", str(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
        assert self.line() == "ready"

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def send(self, n: int) -> dict[str, bytes]:
        self.ask(f"send {n}")
        acked = {}
        for _ in range(n):
            word, env_id, body = self.line().split(" ", 2)
            assert word == "acked"
            acked[env_id] = body.encode()
        return acked

    def building(self) -> tuple[int, str]:
        self.ask("building")
        _word, rows, state = self.line().split()
        return int(rows), state

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_kill_9_with_a_half_built_batch_loses_nothing_acknowledged_and_reuses_no_seq(
        tmp_path: Path, broker: Mosquitto) -> None:
    from tests.support import agent_config_dict, toml_dumps

    (tmp_path / "state").mkdir()
    conf = tmp_path / "agent.toml"

    def write(window: float) -> None:
        conf.write_text(toml_dumps(agent_config_dict(tmp_path / "state", broker.url,
                                                     uplink={"batch_window_s": window, "batch_max_count": 10_000})))
    wire = Wire(broker.url)
    try:
        write(3600)  # the batch fills and is not due: it is half built when the agent dies
        child = Child(conf)
        try:
            wait_until(lambda: child.building()[1] == "connected")
            acked = child.send(40)
            wait_until(lambda: child.building()[0] == 40)
            assert wire.snapshot() == [], "nothing of the half-built batch left the box"
        finally:
            child.kill()
        write(0.05)
        child = Child(conf)
        try:
            wait_until(lambda: len(wire.envelopes()) >= 40)
            later = child.send(10)
            wait_until(lambda: len(wire.envelopes()) >= 50)
        finally:
            child.kill()
        got = {json.loads(b)["id"]: b for _, b in wire.envelopes()}
        assert {k: got.get(k) for k in acked} == acked, "every acknowledged envelope arrived, byte for byte"
        old = max(int(k.split(":")[1]) for k in acked)
        assert min(int(k.split(":")[1]) for k in later) > old, "the new run's seqs start above the dead one's"
        assert {k: got.get(k) for k in later} == later
        assert len(wire.envelopes()) == 50, "each envelope once: the dead run sent nothing of its batch"
    finally:
        wire.close()


def test_county_status_reads_a_batched_heartbeat(broker: Mosquitto, tmp_path: Path) -> None:
    """`village county status` subscribes to the batch topics too: a heartbeat that came in a batch counts."""
    import io
    import time

    from agent.protocol.batch import pack
    from county.status import run_status
    from tests.test_camera_county_status import args_for

    db = tmp_path / "status.db"
    out = io.StringIO()
    assert asyncio.run(run_status(args_for(broker.url, db, "--json"), out)) == 0  # opens the persistent session
    now = int(time.time() * 1000)
    hb = Envelope("box-9", 5, now, T, "heartbeat", {"uptime_s": 1, "outbox": {"depth": {"telemetry": 7}}}).encode()
    pos = Envelope("box-9", 6, now, T, "position", {"wearer": "w"}).encode()
    pub = Publisher(broker.url)
    try:
        pub.publish([("vc/v1/box/box-9/up/batch/telemetry", pack([pos, hb]))])
    finally:
        pub.close()
    out = io.StringIO()
    assert asyncio.run(run_status(args_for(broker.url, db, "--json"), out)) == 0
    rows = {r["box"]: r for r in map(json.loads, filter(str.strip, out.getvalue().splitlines())) if "box" in r}
    assert rows["box-9"]["backlog"] == 7
