"""The event hub (bounded fan-out, `lost` markers, dedupe) and ingest's flow control: it holds at most
`inflight` unacknowledged messages, and announces an alarm only after its commit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from agent.protocol.envelope import MsgClass
from agent.protocol.topics import Topics
from county.ingest import Incoming, Ingest, IngestConfig, Outcome, Parsed, is_alarm
from county.server.events import EventHub
from county.store import Database
from county.store.tables import alarms, messages
from tests.county_ingest_proc import P, Publisher, envelope, sos, until
from tests.support import Collector, Mosquitto


async def test_a_slow_subscriber_loses_events_and_is_told_so() -> None:
    hub = EventHub(maxsize=3)
    async with hub.subscribe() as slow, hub.subscribe(["alarm"]) as alarms_only:
        for i in range(10):
            hub.publish("alarm" if i % 2 else "box", {"n": i})
        got = []
        while (ev := slow.get_nowait()) is not None:
            got.append((ev.kind, ev.data))
        assert got == [("box", {"n": 0}), ("alarm", {"n": 1}), ("box", {"n": 2}), ("lost", {"count": 7})]
        assert slow.lost_total == 7
        # after the gap, events flow again, the marker first if more were lost meanwhile
        hub.publish("receipt", {"n": 10})
        ev = slow.get_nowait()
        assert ev is not None and (ev.kind, ev.data) == ("receipt", {"n": 10})
        assert [alarms_only.get_nowait() for _ in range(4)][-1] is not None
        assert hub.subscribers == 2
    assert hub.subscribers == 0


async def test_lost_marker_sits_where_the_gap_was() -> None:
    hub = EventHub(maxsize=2)
    sub = hub.open()
    for i in range(4):
        hub.publish("box", {"n": i})
    assert sub.get_nowait().data == {"n": 0}  # type: ignore[union-attr]
    hub.publish("box", {"n": 4})  # room again: the marker goes in first, then the event
    kinds = []
    while (ev := sub.get_nowait()) is not None:
        kinds.append((ev.kind, ev.data))
    assert kinds == [("box", {"n": 1}), ("lost", {"count": 2}), ("box", {"n": 4})]


async def test_dedupe_key_and_async_iteration() -> None:
    hub = EventHub(dedupe=2)
    sub = hub.open()
    assert hub.publish("alarm", {"id": "a"}, key=("alarm", "a"))
    assert not hub.publish("alarm", {"id": "a"}, key=("alarm", "a"))
    assert hub.publish("alarm", {"id": "a"})  # no key: always
    hub.publish("alarm", {"id": "b"}, key=("alarm", "b"))
    hub.publish("alarm", {"id": "c"}, key=("alarm", "c"))
    assert hub.publish("alarm", {"id": "a"}, key=("alarm", "a"))  # forgotten: the memory is bounded

    async def read() -> list[str]:
        return [ev.data["id"] async for ev in sub]

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)
    hub.close()
    assert await reader == ["a", "a", "b", "c", "a"]


class Gate:
    """Holds ingest's store writes until opened (the database itself stays real)."""

    def __init__(self, write: Callable[[Sequence[tuple[Incoming, Parsed]]], Awaitable[Outcome]]) -> None:
        self.write = write
        self.open = asyncio.Event()
        self.waiting = 0

    async def __call__(self, items: Sequence[tuple[Incoming, Parsed]]) -> Outcome:
        self.waiting += 1
        await self.open.wait()
        return await self.write(items)


async def count(db: Database, table: Any) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


@pytest.mark.parametrize("protocol", [5, 4])
async def test_backpressure_and_events_after_commit(broker: Mosquitto, tmp_path: Path, protocol: int) -> None:
    """MQTT 5: Receive Maximum keeps the rest at the broker. MQTT 3.1.1 (no such thing; the test broker
    sends without limit): paho's thread waits for a slot, so it stops reading the socket."""
    db = await Database.open(f"sqlite:///{tmp_path / 'c.db'}")
    hub = EventHub()
    events = hub.open()
    ing = Ingest(IngestConfig(urls=[broker.url], client_id="county-bp", inflight=20, batch_max=10,
                              live_hold_s=30, protocol=protocol), db, hub)
    gate = Gate(ing.store.write)
    ing.store.write = gate  # type: ignore[method-assign]
    pub = Publisher(broker.url)
    marker = Collector(broker.url, ["marker/#"]).start()
    try:
        await ing.start()
        await ing.wait_subscribed()
        pub.publish([sos("box-a", 1)] + [envelope("box-a", s, "event", "low_battery", {}) for s in range(2, 201)])
        await until(lambda: ing.stats["received"] >= 20)
        # a message through the same broker after all of them: by then it had offered the ingest what it would
        pub.publish([("marker/x", b"1")])
        await asyncio.to_thread(marker.wait_for, lambda msgs: msgs)
        assert ing.stats["received"] == 20  # the other 180 wait at the broker or in the socket
        assert await count(db, messages) == 0 and events.get_nowait() is None  # nothing announced uncommitted
        gate.open.set()
        await until(lambda: ing.stats["acked"] >= 200)
        assert await count(db, messages) == 200 and await count(db, alarms) == 1
        assert ing.stats["store_errors"] == 0
        ev = events.get_nowait()
        assert ev is not None and ev.kind == "alarm" and ev.data["id"] == "box-a:1"
        assert set(ev.data) == {"id", "box", "kind", "wearer", "ts", "state", "pos"}
    finally:
        marker.stop()
        pub.close()
        await ing.close()
        await db.close()


async def test_broker_restart_between_receive_and_commit(broker: Mosquitto, tmp_path: Path) -> None:
    """Messages received on a connection that drops before their commit are not acknowledged on the next
    connection (their mids belong to the old one): the broker sends them again and each is stored once."""
    db = await Database.open(f"sqlite:///{tmp_path / 'c.db'}")
    ing = Ingest(IngestConfig(urls=[broker.url], client_id="county-restart", live=False), db)
    gate = Gate(ing.store.write)
    ing.store.write = gate  # type: ignore[method-assign]
    pub = Publisher(broker.url)
    try:
        await ing.start()
        await ing.wait_subscribed()
        pub.publish([envelope("box-r", s, "event", "low_battery", {}) for s in range(1, 51)])
        await until(lambda: ing.stats["received"] >= 50)
        pub.close()
        gen = ing.conn.gen
        broker.restart()  # persistence on: the ingest's session and its 50 unacknowledged messages survive
        await until(lambda: ing.conn.gen > gen)  # the ingest saw the connection drop
        gate.open.set()
        await until(lambda: ing.stats["not_acked"] >= 50)  # committed, but that connection is gone
        await until(lambda: ing.stats["acked"] >= 50, 60)  # sent again after the reconnect, acked now
        assert ing.stats["stored"] == 50 and ing.stats["duplicates"] >= 50
        assert await count(db, messages) == 50
        assert ing.conn.session_lost == 0
    finally:
        await ing.close()
        await db.close()


async def test_a_database_away_is_waited_for_not_quarantined(broker: Mosquitto, tmp_path: Path) -> None:
    """While the database answers OperationalError (away, locked), nothing is acknowledged and nothing is
    quarantined; once it is back, every message is stored. (The outage is injected in front of the real
    store: the test cannot take the session's PostgreSQL away, and a locked SQLite waits 10 s first.)"""
    from sqlalchemy.exc import OperationalError

    db = await Database.open(f"sqlite:///{tmp_path / 'c.db'}")
    ing = Ingest(IngestConfig(urls=[broker.url], client_id="county-away", live=False), db)
    real = ing.store.write
    outage = {"left": 3}

    async def write(items: Sequence[tuple[Incoming, Parsed]]) -> Outcome:
        if outage["left"] > 0:
            outage["left"] -= 1
            raise OperationalError("INSERT ...", {}, Exception("connection refused"))
        return await real(items)

    ing.store.write = write  # type: ignore[method-assign]
    pub = Publisher(broker.url)
    try:
        await ing.start()
        await ing.wait_subscribed()
        pub.publish([sos("box-w", 1)] + [envelope("box-w", s, "event", "low_battery", {}) for s in range(2, 21)])
        await until(lambda: ing.stats["acked"] >= 20)
        assert outage["left"] == 0 and ing.stats["store_errors"] >= 1
        assert await count(db, messages) == 20 and await count(db, alarms) == 1
        assert ing.stats["quarantined"] == 0
    finally:
        pub.close()
        await ing.close()
        await db.close()


def _incoming(topic: str) -> Incoming:
    return Incoming(topic, b"{}", 1, 1, False, 0, 0)


def test_only_an_alarm_stops_a_batch_waiting_for_its_window() -> None:
    topics = Topics(P)
    assert is_alarm(topics, _incoming(topics.up("box-a", MsgClass.ALARM, "sos")))
    assert is_alarm(topics, _incoming(topics.up("box-b", MsgClass.ALARM, "fall")))
    others = [_incoming(topics.up("box-a", MsgClass.TELEMETRY, "heartbeat")),
              _incoming(topics.up("box-a", MsgClass.EVENT, "low_battery")),
              _incoming(topics.up("box-a", MsgClass.RECEIPT, "cmd")), _incoming(topics.state("box-a")),
              _incoming("elsewhere/box/box-a/up/alarm/sos")]  # another prefix: not this county's alarm
    assert not any(is_alarm(topics, it) for it in others)


async def test_an_alarm_is_committed_and_announced_without_waiting_for_the_batch_window(
        broker: Mosquitto, tmp_path: Path) -> None:
    """batch_ms = 60 s: a telemetry opens the window, the alarm after it still reaches the hub at once
    (the wait below gives up after 30 s, long before the window would close)."""
    db = await Database.open(f"sqlite:///{tmp_path / 'c.db'}")
    hub = EventHub()
    events = hub.open()
    ing = Ingest(IngestConfig(urls=[broker.url], client_id="county-urgent", batch_max=500, batch_ms=60_000,
                              live=False), db, hub)  # no live feed: the hub hears the alarm only after commit
    pub = Publisher(broker.url)
    try:
        await ing.start()
        await ing.wait_subscribed()
        pub.publish([envelope("box-a", 1, "event", "low_battery", {})])
        await until(lambda: ing.stats["received"] >= 1)  # the batch (and its 60 s window) is open
        pub.publish([sos("box-a", 2)])
        seen: list[Any] = []

        def alarm_announced() -> bool:
            while (ev := events.get_nowait()) is not None:
                seen.append(ev)
            return any(ev.kind == "alarm" for ev in seen)

        await until(alarm_announced, within_s=30)
        assert [ev.data["id"] for ev in seen if ev.kind == "alarm"] == ["box-a:2"]
        assert ing.stats["batches"] == 1 and ing.stats["acked"] == 2  # one batch: the telemetry went with it
        assert await count(db, messages) == 2 and await count(db, alarms) == 1
    finally:
        pub.close()
        await ing.close()
        await db.close()


class StepGate:
    """Lets ingest's store writes through one at a time (`allow`), keeping what each write was given."""

    def __init__(self, write: Callable[[Sequence[tuple[Incoming, Parsed]]], Awaitable[Outcome]]) -> None:
        self.write = write
        self.allowed = asyncio.Semaphore(0)
        self.batches: list[list[str]] = []

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.allowed.release()

    async def __call__(self, items: Sequence[tuple[Incoming, Parsed]]) -> Outcome:
        self.batches.append([it.topic for it, _p in items])
        await self.allowed.acquire()
        return await self.write(items)


async def test_an_alarm_goes_ahead_of_a_telemetry_backlog_and_its_ack_waits_for_the_earlier_ones(
        broker: Mosquitto, tmp_path: Path) -> None:
    """200 telemetry envelopes are in ingest's hands (one batch of 10 being written) when an SOS arrives: the
    next batch is the SOS alone, committed and announced while 190 telemetry envelopes still wait; its
    PUBACK is held back until those before it are committed (MQTT acknowledges in arrival order)."""
    db = await Database.open(f"sqlite:///{tmp_path / 'c.db'}")
    hub = EventHub()
    events = hub.open(kinds=["alarm"])
    ing = Ingest(IngestConfig(urls=[broker.url], client_id="county-prio", batch_max=10, batch_ms=50, inflight=1000,
                              live=False), db, hub)
    gate = StepGate(ing.store.write)
    ing.store.write = gate  # type: ignore[method-assign]
    pub = Publisher(broker.url)
    try:
        await ing.start()
        await ing.wait_subscribed()
        pub.publish([envelope("box-a", i, "telemetry", "heartbeat", {"uptime_s": i}) for i in range(1, 201)])
        await until(lambda: ing.stats["received"] == 200 and len(gate.batches) == 1)
        pub.publish([sos("box-a", 201)])
        await until(lambda: ing.stats["received"] == 201)
        gate.allow()  # the first telemetry batch
        await until(lambda: len(gate.batches) == 2)
        assert gate.batches[1] == [f"{P}/box/box-a/up/alarm/sos"]  # the alarm alone, ahead of 190 telemetry
        gate.allow()
        ev = await until(lambda: events.get_nowait())
        assert ev.data["id"] == "box-a:201"
        assert ing.stats["stored"] == 11
        assert ing.stats["acked"] == 10  # the alarm's PUBACK waits for the 190 that came before it
        gate.allow(100)
        await until(lambda: ing.stats["acked"] == 201)
        assert ing.stats["not_acked"] == 0 and await count(db, messages) == 201
        assert all(len(b) <= 10 for b in gate.batches)
    finally:
        pub.close()
        await ing.close()
        await db.close()
