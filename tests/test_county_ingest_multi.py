"""Two ingest instances, one PostgreSQL, one mosquitto: the shared subscription splits the load, nothing is
stored twice, and an alarm ingested by either instance reaches both instances' event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from county.ingest import Ingest, IngestConfig
from county.server.events import Event, EventHub
from county.store import Database
from county.store.tables import alarms, messages, receipts
from tests.county_ingest_proc import Publisher, envelope, sos, until
from tests.pgcluster import PgCluster
from tests.support import Mosquitto


@pytest.fixture
async def pg_url(pg_cluster: PgCluster) -> AsyncIterator[str]:
    name = "multi_ingest"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)


async def count(db: Database, table: object) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def at_least(db: Database, table: object, n: int) -> bool:
    return await count(db, table) >= n


async def test_two_instances_split_the_load_and_both_streams_see_every_alarm(pg_url: str,
                                                                             broker: Mosquitto) -> None:
    dbs = [await Database.open(pg_url), await Database.open(pg_url)]
    hubs = [EventHub(), EventHub()]
    subs = [h.open() for h in hubs]
    ingests = [Ingest(IngestConfig(urls=[broker.url], client_id=f"county-{i}"), dbs[i], hubs[i]) for i in (0, 1)]
    pub = Publisher(broker.url)
    try:
        for ing in ingests:
            await ing.start()
        for ing in ingests:
            await ing.wait_subscribed()
        burst = [envelope(f"box-{i % 20:02d}", 1 + i // 20, "telemetry", "position",
                          {"wearer": "w", "pos": {"lat": 1.0, "lon": 2.0}}) for i in range(2000)]
        pub.publish(burst)
        await until(lambda: at_least(dbs[0], messages, 2000))
        stored = [ing.stats["stored"] for ing in ingests]
        assert all(n > 0 for n in stored), stored  # the load split
        assert sum(stored) == 2000 and await count(dbs[0], messages) == 2000  # nothing twice

        # alarms and a receipt: each stored by one instance, announced on both streams
        sent = [sos(f"box-{i:02d}", 1000) for i in range(6)]
        pub.publish([*sent, envelope("box-00", 1001, "receipt", "cmd", {"cmd": "c-1", "state": "finished"})])
        want = sorted(f"box-{i:02d}:1000" for i in range(6))
        events: list[list[Event]] = [[], []]

        def pump() -> list[list[Event]]:
            for i in (0, 1):
                while (ev := subs[i].get_nowait()) is not None:
                    events[i].append(ev)
            return events

        def alarms_on(i: int) -> list[str]:
            return sorted(e.data["id"] for e in events[i] if e.kind == "alarm")

        def receipts_on(i: int) -> list[tuple[str, str]]:
            return [(e.data["cmd"], e.data["state"]) for e in events[i] if e.kind == "receipt"]

        await until(lambda: pump() and all(set(alarms_on(i)) >= set(want) and receipts_on(i) for i in (0, 1)))
        assert alarms_on(0) == alarms_on(1) == want  # once each per stream
        assert receipts_on(0) == receipts_on(1) == [("c-1", "finished")]
        assert await count(dbs[0], alarms) == 6 and await count(dbs[0], receipts) == 1
        assert sum(ing.stats["stored"] for ing in ingests) == 2007
        assert [ing.stats["store_errors"] for ing in ingests] == [0, 0]  # no batch fell back to one by one
        # some of the alarms were stored by the other instance: they came to this stream from the wire
        assert all(ing.live is not None for ing in ingests)
        assert sum(ing.live.announced for ing in ingests if ing.live is not None) >= 7
    finally:
        pub.close()
        for ing in ingests:
            await ing.close()
        for db in dbs:
            await db.close()


async def test_worker_processes_split_the_load_feed_one_hub_and_come_back_after_a_kill(
        db_url: str, broker: Mosquitto) -> None:
    """IngestConfig(workers=2): this process and one `python -m county.ingest --worker` share the
    subscription; each stores its share once; the worker's alarms and box changes reach this process's hub
    (no live feed here: only through the worker's pipe, after its commit), box events with the regions'
    names; a worker killed with SIGKILL is started again and its session's messages are stored."""
    import os
    import signal

    db = await Database.open(db_url)
    hub = EventHub()
    sub = hub.open()
    ing = Ingest(IngestConfig(urls=[broker.url], client_id="county-wk", workers=2, live=False), db, hub,
                 describe=lambda box: {"name": f"名-{box}", "village": "v", "township": "t"})
    pub = Publisher(broker.url)
    events: list[Event] = []

    def pump() -> list[Event]:
        while (ev := sub.get_nowait()) is not None:
            events.append(ev)
        return events

    try:
        await ing.start()
        await ing.wait_subscribed(60)
        assert ing.workers is not None
        burst = [envelope(f"box-{i % 20:02d}", 1 + i // 20, "telemetry", "heartbeat", {"uptime_s": i})
                 for i in range(2000)]
        pub.publish([*burst, *[sos(f"box-{i:02d}", 1000) for i in range(6)]])
        await until(lambda: ing.totals()["stored"] >= 2006 and at_least(db, messages, 2006), 60)
        assert ing.stats["stored"] > 0 and ing.workers.stats[1]["stored"] > 0  # the load split
        assert ing.totals()["stored"] == 2006 == await count(db, messages)  # nothing twice
        want = sorted(f"box-{i:02d}:1000" for i in range(6))
        await until(lambda: sorted(e.data["id"] for e in pump() if e.kind == "alarm") == want)
        boxes_seen = [e.data for e in events if e.kind == "box"]
        assert boxes_seen and all(b["name"] == f"名-{b['id']}" for b in boxes_seen)

        pid = ing.workers.procs[1].pid
        os.kill(pid, signal.SIGKILL)
        await until(lambda: ing.workers is not None and ing.workers.restarts == 1
                    and ing.workers.procs[1].pid != pid and ing.workers.ready[1].is_set(), 60)
        pub.publish([envelope(f"box-{i % 20:02d}", 2000 + i, "telemetry", "heartbeat", {}) for i in range(400)])
        await until(lambda: at_least(db, messages, 2406), 60)
        assert await count(db, messages) == 2406
    finally:
        pub.close()
        await ing.close()
        sub.close()
        await db.close()
    assert ing.workers is not None and all(p.returncode is not None for p in ing.workers.procs.values())


def _children(pid: int) -> list[int]:
    from pathlib import Path

    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_kill_9_of_the_server_stops_its_worker_and_loses_nothing(db_url: str, broker: Mosquitto,
                                                                       tmp_path: Path) -> None:
    """`python -m county.ingest --workers 2` killed with SIGKILL mid-burst: its worker reads the end of its
    stdin and stops; after a restart every envelope is stored exactly once."""
    import asyncio
    import os
    import threading

    from tests.county_ingest_proc import IngestProcess

    msgs = [envelope(f"box-{i % 50:02d}", 1 + i // 50, "telemetry", "position",
                     {"wearer": "w", "pos": {"lat": 1.0, "lon": 2.0}}) for i in range(6000)]
    half = len(msgs) // 2
    db = await Database.open(db_url)
    proc = IngestProcess(db_url, broker.url, "county-wkill", tmp_path / "ingest.log")
    proc.args += ["--workers", "2"]
    proc.start(60)
    assert proc.proc is not None
    workers = _children(proc.proc.pid)
    assert len(workers) == 1
    pub = Publisher(broker.url)
    killed, second = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            pub.publish(msgs[:half])
            if not killed.wait(60):
                raise TimeoutError("never killed")
            pub.publish(msgs[half:])
            second.set()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=publish)
    t.start()
    try:
        await until(lambda: at_least(db, messages, 300), 60)
        proc.kill()
        await until(lambda: not os.path.exists(f"/proc/{workers[0]}") or _zombie(workers[0]), 30)
        at_kill = await count(db, messages)
        killed.set()
        assert at_kill < len(msgs)
        await asyncio.to_thread(second.wait, 60)
        assert not errors, errors
        assert await count(db, messages) == at_kill  # nobody ingests: the worker is gone too
        proc.start(60)
        await until(lambda: at_least(db, messages, len(msgs)), 90)
        async with db.connect() as conn:
            ids = [r[0] for r in (await conn.execute(select(messages.c.id))).all()]
        assert sorted(ids) == sorted(f"box-{i % 50:02d}:{1 + i // 50}" for i in range(len(msgs)))
        assert proc.stop() == 0
    finally:
        killed.set()
        t.join(60)
        pub.close()
        proc.kill()
        await db.close()


def _zombie(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


async def test_ingest_over_tls_with_the_console_identity_and_the_shipped_acl(db_url: str, tmp_path: Path) -> None:
    """The production path: mqtts with the county CA, the console's client certificate, docs/county/
    mosquitto.conf and acl as shipped (tests/pki.py). Ingest reads its TLS socket 64 KiB at a time: envelopes
    from a few bytes to over 64 KiB, many per read, each stored once and acknowledged."""
    import asyncio

    from tests.pki import CountyBroker, TestCA, tls_collector

    repo = Path(__file__).resolve().parents[1]
    ca = TestCA(tmp_path / "ca")
    (tmp_path / "broker").mkdir()
    broker = CountyBroker(tmp_path / "broker", ca, (repo / "docs/county/acl").read_text())
    broker.start()
    console = ca.client("county-console")
    db = await Database.open(db_url)
    ing = Ingest(IngestConfig(urls=[broker.url], client_id="county-tls", ca=ca.pem, cert=console.cert,
                              key=console.key, live=False), db)
    box = "lhk-menglou-001"
    sender = tls_collector(broker, ca.client(box), topics=[], client_id=box)
    try:
        await ing.start()
        await ing.wait_subscribed(30)
        sizes = [0, 10, 70_000, 5, 200_000, *([50] * 400)]
        msgs = [envelope(box, i + 1, "telemetry", "heartbeat", {"pad": "x" * n}) for i, n in enumerate(sizes)]

        def send() -> None:
            for topic, payload in msgs:
                sender.publish(topic, payload)

        await asyncio.to_thread(send)
        await until(lambda: at_least(db, messages, len(msgs)), 60)
        assert await count(db, messages) == len(msgs) and ing.stats["quarantined"] == 0
        await until(lambda: ing.stats["acked"] == len(msgs))
        async with db.connect() as conn:
            raw = dict((await conn.execute(select(messages.c.id, messages.c.raw))).all())
        assert all(raw[f"{box}:{i + 1}"] == payload.decode() for i, (_t, payload) in enumerate(msgs))
    finally:
        sender.stop()
        await ing.close()
        await db.close()
        broker.stop()
