"""Two ingest instances, one PostgreSQL, one mosquitto: the shared subscription splits the load, nothing is
stored twice, and an alarm ingested by either instance reaches both instances' event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
