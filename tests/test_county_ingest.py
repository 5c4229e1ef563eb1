"""County ingest against a real mosquitto and real databases (SQLite and PostgreSQL via `db_url`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from county.ingest import QUARANTINE_MAX_BYTES, Ingest, IngestConfig
from county.server.events import EventHub, Subscription
from county.store import Database
from county.store.queries import seq_gaps
from county.store.tables import (
    alarms,
    boxes,
    camera_periods,
    camera_states,
    messages,
    positions,
    positions_latest,
    quarantine,
    receipts,
)
from tests.county_ingest_proc import P, Publisher, envelope, sos, until
from tests.support import Mosquitto


@dataclass
class Rig:
    db: Database
    ingest: Ingest
    hub: EventHub
    events: Subscription
    pub: Publisher
    store_errors_expected: int = 0

    async def rows(self, table: Any, *where: Any) -> list[Any]:
        async with self.db.connect() as conn:
            return list((await conn.execute(select(table).where(*where))).mappings().all())

    async def count(self, table: Any) -> int:
        async with self.db.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    async def send(self, msgs: list[tuple[str, bytes]], *, retain: bool = False) -> None:
        """Publish and wait until ingest acknowledged that many more messages (so they are committed)."""
        before = self.ingest.stats["acked"]
        self.pub.publish(msgs, retain=retain)
        await until(lambda: self.ingest.stats["acked"] >= before + len(msgs))


@pytest.fixture
async def rig(db_url: str, broker: Mosquitto) -> AsyncIterator[Rig]:
    db = await Database.open(db_url)
    hub = EventHub()
    ingest = Ingest(IngestConfig(urls=[broker.url], client_id="county-test-1"), db, hub)
    events = hub.open()
    await ingest.start()
    await ingest.wait_subscribed()
    pub = Publisher(broker.url)
    rig = Rig(db, ingest, hub, events, pub)
    try:
        yield rig
        # no batch fell back to one-by-one unless the test meant it (a statement that fails for every
        # batch would otherwise pass every test, only slowly)
        assert ingest.stats["store_errors"] == rig.store_errors_expected
    finally:
        pub.close()
        await ingest.close()
        await db.close()


def drain(sub: Subscription) -> list[tuple[str, dict[str, Any]]]:
    out = []
    while (ev := sub.get_nowait()) is not None:
        out.append((ev.kind, ev.data))
    return out


HEARTBEAT = {"uptime_s": 5, "outbox": {"depth": {"alarm": 0, "receipt": 1, "event": 2, "telemetry": 3},
                                       "oldest_ts": {}, "bytes": 10, "counters": {"evicted.telemetry": 2}},
             "disk_free_mb": 100, "version": "1.2.3"}


async def test_every_kind_lands_in_its_table(rig: Rig) -> None:
    b = "lhk-menglou-001"
    rig.pub.publish([(f"{P}/box/{b}/state", json.dumps({"state": "online", "ts": 1_763_900_000_000,
                                                        "version": "1.2.3", "groups": ["town-a"]}).encode())],
                    retain=True)
    await rig.send([
        envelope(b, 1, "telemetry", "heartbeat", HEARTBEAT),
        envelope(b, 2, "telemetry", "position", {"wearer": "w1", "device": "band-1",
                                                 "pos": {"lat": 22.1, "lon": 113.1, "fix_ts": 5, "acc_m": 3}}),
        sos(b, 3),
        envelope(b, 4, "alarm", "lost_contact", {"wearer": "w2", "device": "band-2", "last_seen": 1}),
        envelope(b, 5, "event", "camera", {"camera": "cam1", "state": "offline", "reason": "timeout", "since": 7}),
        envelope(b, 6, "telemetry", "cameras", {"from": 1000, "to": 901_000, "summary": {"online": 1, "total": 2},
                                                "cameras": [
                                                    {"camera": "cam1", "state": "offline", "reason": "timeout",
                                                     "since": 7, "seconds": {"online": 600, "offline": 300}},
                                                    {"camera": "cam2", "state": "online", "reason": None,
                                                     "since": 2, "seconds": {"online": 900}}]}),
        envelope(b, 7, "receipt", "cmd", {"cmd": "c-1", "state": "received"}),
        envelope(b, 8, "event", "low_battery", {"wearer": "w1", "device": "band-1", "battery_pct": 9}),
        envelope(b, 9, "event", "geofence_enter", {"wearer": "w1", "device": "band-1", "fence": "f1"}),
        sos(b, 10, wearer="w3", kind="fall"),
        sos(b, 11, wearer="w3", kind="band_removed"),
        sos(b, 12, wearer="w3", kind="geofence_exit"),
    ])
    await until(lambda: rig.ingest.stats["acked"] >= 13)
    assert await rig.count(messages) == 12
    msgs = await rig.rows(messages)
    assert {m["seq"] for m in msgs} == set(range(1, 13))
    assert all(json.loads(m["raw"])["id"] == m["id"] for m in msgs)
    (box,) = await rig.rows(boxes)
    assert box["state"] == "online" and box["state_ts"] == 1_763_900_000_000 and box["groups"] == ["town-a"]
    assert box["last_seq"] == 12 and box["backlog"] == 6 and box["version"] == "1.2.3"
    assert box["heartbeat"]["outbox"]["counters"] == {"evicted.telemetry": 2}
    assert box["first_seen"] <= box["last_seen"]
    al = {a["kind"]: a for a in await rig.rows(alarms)}
    assert set(al) == {"sos", "lost_contact", "fall", "band_removed", "geofence_exit"}
    assert al["sos"]["id"] == f"{b}:3" and al["sos"]["state"] == "new" and al["sos"]["wearer"] == "w1"
    assert al["sos"]["pos"]["lat"] == 22.5 and al["lost_contact"]["pos"] is None
    pos = sorted(await rig.rows(positions), key=lambda r: r["ts"])
    assert [(p["wearer"], p["lat"]) for p in pos] == [("w1", 22.1), ("w1", 22.5)] + [("w3", 22.5)] * 3
    (latest,) = await rig.rows(positions_latest, positions_latest.c.wearer == "w1")
    assert latest["lat"] == 22.5 and latest["ts"] == 1_763_900_000_003  # the alarm's position is newer
    cams = {c["camera"]: c for c in await rig.rows(camera_states)}
    assert cams["cam1"]["state"] == "offline" and cams["cam2"]["state"] == "online"
    periods = {p["camera"]: p for p in await rig.rows(camera_periods)}
    assert periods["cam1"]["seconds"] == {"online": 600, "offline": 300}
    assert periods["cam1"]["period_from"] == 1000 and periods["cam1"]["period_to"] == 901_000
    (rc,) = await rig.rows(receipts)
    assert (rc["cmd"], rc["box"], rc["state"], rc["envelope"]) == ("c-1", b, "received", f"{b}:7")
    kinds = [k for k, _ in drain(rig.events)]
    assert kinds.count("alarm") == 5 and kinds.count("receipt") == 1 and "box" in kinds
    evs = drain(rig.events)
    assert evs == []


async def test_duplicates_are_stored_once(rig: Rig) -> None:
    b = "box-dup"
    once = [sos(b, 1), envelope(b, 2, "telemetry", "position", {"wearer": "w1", "pos": {"lat": 1, "lon": 2}}),
            envelope(b, 3, "receipt", "cmd", {"cmd": "c-9", "state": "finished"})]
    await rig.send(once + once)  # a resend in the same batch
    await rig.send(once)  # and in a later one
    assert await rig.count(messages) == 3
    assert await rig.count(alarms) == 1
    assert await rig.count(positions) == 2  # the alarm's and the telemetry's, once each
    assert await rig.count(receipts) == 1
    assert rig.ingest.stats["duplicates"] == 6
    events = drain(rig.events)
    assert [k for k, _ in events].count("alarm") == 1
    assert [k for k, _ in events].count("receipt") == 1


async def test_bad_input_is_quarantined_and_ingest_goes_on(rig: Rig) -> None:
    b = "box-bad"
    good = envelope(b, 1, "event", "low_battery", {"battery_pct": 5})
    wrong_box = envelope("box-other", 2, "event", "low_battery", {})
    wrong_kind = envelope(b, 3, "event", "camera", {})
    no_fields = (f"{P}/box/{b}/up/event/x", json.dumps({"v": 1, "box": b}).encode())
    # a reason that quotes a long, unprintable box id still fits quarantine.reason (String(200))
    odd_box = (f"{P}/box/{b}/up/event/low_battery",
               json.dumps({"v": 1, "id": "\x01" * 300 + ":1", "box": "\x01" * 300, "seq": 1, "ts": 1,
                           "class": "event", "kind": "low_battery", "data": {}}).encode())
    huge = (f"{P}/box/{b}/up/telemetry/heartbeat", b"{" + b" " * (10 * 1024 * 1024) + b"}")
    batch = [
        good,
        (f"{P}/box/{b}/up/event/low_battery", b'{"v":1, "id": '),  # malformed JSON
        (wrong_box[0].replace("box-other", b), wrong_box[1]),  # the envelope of another box
        (wrong_kind[0].replace("/camera", "/low_battery"), wrong_kind[1]),  # kind other than the topic's
        huge,
        (f"{P}/box/{b}/up/event/low_battery", b'{"v":1,"id":"box-bad:9","box":"\xff\xfe"}'),  # not UTF-8
        no_fields,
        odd_box,
        envelope(b, 10, "event", "low_battery", {"battery_pct": 4}),
    ]
    await rig.send(batch)
    assert sorted(m["seq"] for m in await rig.rows(messages)) == [1, 10]
    q = sorted(await rig.rows(quarantine), key=lambda r: r["id"])
    assert len(q) == 7 and rig.ingest.stats["quarantined"] == 7
    reasons = [r["reason"] for r in q]
    assert reasons[0].startswith("not an envelope: not JSON")
    assert "box box-other on the topic of box box-bad" in reasons[1]
    assert "event/camera on the topic of event/low_battery" in reasons[2]
    assert reasons[3].startswith("payload too large")
    assert reasons[4].startswith("not UTF-8")
    assert "missing field" in reasons[5]
    assert reasons[6].startswith("box \\x01") and len(reasons[6]) <= 200
    assert rig.ingest.stats["store_errors"] == 0
    big = q[3]
    assert big["size"] == len(huge[1]) and len(big["raw"]) == QUARANTINE_MAX_BYTES
    assert bytes(q[4]["raw"]) == batch[5][1]
    # and it goes on
    await rig.send([envelope(b, 11, "event", "low_battery", {})])
    assert await rig.count(messages) == 3


async def test_hostile_field_values_do_not_stop_a_batch(rig: Rig) -> None:
    """Values the columns cannot hold (NUL, lone surrogates, overlong names, huge numbers) are cleaned or
    left out of the derived rows; the envelope itself is stored exactly as received."""
    b = "box-odd"
    await rig.send([
        envelope(b, 1, "alarm", "sos", {"wearer": "w\u0000" + "x" * 100, "device": "\ud800",
                                        "pos": {"lat": 1000.0, "lon": "east"}, "note": "\u0000\ud800"}),
        envelope(b, 2, "receipt", "cmd", {"cmd": "c" * 65, "state": "finished"}),
        envelope(b, 3, "receipt", "cmd", {"cmd": "c-2", "state": "finished", "reason": "\u0000\ud800" * 3000}),
        envelope(b, 4, "event", "camera", {"camera": "cam\u0000", "state": "bogus"}),
        envelope(b, 5, "telemetry", "heartbeat", {"outbox": {"depth": {"a": 10**30, "b": "x"}}, "version": 7}),
        (f"{P}/box/{b}/up/event/low_battery",
         json.dumps({"v": 1, "id": f"{b}:{2**70}", "box": b, "seq": 2**70, "ts": 1, "class": "event",
                     "kind": "low_battery", "data": {}}).encode()),
        envelope(b, 7, "event", "low_battery", {"battery_pct": float("nan")}),  # Python's json, not JSON
        envelope(b, 8, "telemetry", "cameras", {"from": "x", "cameras": 5}),
        envelope(b, 9, "telemetry", "cameras", {"cameras": [{"camera": "c1", "state": "online", "seconds": [1]},
                                                            "junk", {"camera": 7}]}),
        envelope(b, 6, "event", "low_battery", {}),
    ])
    assert sorted(m["seq"] for m in await rig.rows(messages)) == [1, 2, 3, 4, 5, 6, 8, 9]
    assert [(c["camera"], c["seconds"]) for c in await rig.rows(camera_periods)] == [("c1", {})]
    (a,) = await rig.rows(alarms)
    assert a["wearer"] is None and a["pos"] is None
    (rc,) = await rig.rows(receipts)
    assert rc["cmd"] == "c-2" and "\x00" not in rc["reason"]
    reasons = sorted(r["reason"] for r in await rig.rows(quarantine))
    assert reasons == ["not an envelope: NaN or Infinity is not JSON", "seq or ts out of range"]


async def test_receipts_keep_the_latest_and_final_states(rig: Rig) -> None:
    b = "box-r"

    def r(seq: int, state: str, ts: int, cmd: str = "c-1") -> tuple[str, bytes]:
        return envelope(b, seq, "receipt", "cmd", {"cmd": cmd, "state": state}, ts=ts)

    async def state(cmd: str = "c-1") -> str:
        (row,) = await rig.rows(receipts, receipts.c.cmd == cmd)
        return str(row["state"])

    await rig.send([r(1, "received", 100), r(2, "started", 300)])
    assert await state() == "started"
    await rig.send([r(3, "scheduled", 200)])  # older: ignored
    assert await state() == "started"
    await rig.send([r(4, "finished", 400)])
    assert await state() == "finished"
    await rig.send([r(5, "started", 500)])  # a non-final never replaces a final
    assert await state() == "finished"
    await rig.send([r(6, "failed", 600)])  # a newer final does
    assert await state() == "failed"
    # the same within one batch, in any order, and the same ts: the later state of the lifecycle wins
    await rig.send([r(7, "finished", 900, "c-2"), r(8, "started", 950, "c-2"), r(9, "received", 100, "c-2")])
    assert await state("c-2") == "finished"
    await rig.send([r(10, "started", 10, "c-3"), r(11, "received", 10, "c-3")])
    assert await state("c-3") == "started"
    await rig.send([r(12, "finished", 10, "c-3")])
    assert await state("c-3") == "finished"
    # several commands in one batch (one executemany), each by the same rules
    await rig.send([r(13, "started", 20, "c-4"), r(14, "received", 20, "c-5"), r(15, "started", 700, "c-1"),
                    r(16, "finished", 20, "c-3"), r(17, "expired", 30, "c-3")])
    assert [await state(c) for c in ("c-1", "c-3", "c-4", "c-5")] == ["failed", "expired", "started", "received"]


async def test_older_state_never_overwrites_newer(rig: Rig) -> None:
    topic = f"{P}/box/box-s/state"
    await rig.send([(topic, json.dumps({"state": "online", "ts": 2000, "version": "2", "groups": ["g1"]}).encode())])
    await rig.send([(topic, json.dumps({"state": "offline", "ts": 1000, "version": "1"}).encode())])
    (box,) = await rig.rows(boxes)
    assert (box["state"], box["state_ts"], box["version"]) == ("online", 2000, "2")
    await rig.send([(topic, json.dumps({"state": "offline", "ts": 3000}).encode())])
    (box,) = await rig.rows(boxes)
    assert (box["state"], box["state_ts"], box["version"]) == ("offline", 3000, "2")
    assert box["groups"] == ["g1"]  # a state without groups keeps the known ones
    await rig.send([(topic, b"not json"), (topic, b"")])  # quarantined; an empty retained clear is skipped
    assert await rig.count(quarantine) == 1
    box_events = [d for k, d in drain(rig.events) if k == "box"]
    assert [e["state"] for e in box_events] == ["online", "offline"]
    assert set(box_events[0]) == {"id", "name", "village", "township", "state", "last_seen", "backlog", "version"}


async def test_older_heartbeat_and_position_never_overwrite_newer(rig: Rig) -> None:
    b = "box-h"
    hb_new = {**HEARTBEAT, "outbox": {"depth": {"telemetry": 7}}}
    await rig.send([envelope(b, 2, "telemetry", "heartbeat", hb_new, ts=2000),
                    envelope(b, 4, "telemetry", "position", {"wearer": "w", "pos": {"lat": 2, "lon": 2}}, ts=2000)])
    await rig.send([envelope(b, 1, "telemetry", "heartbeat", HEARTBEAT, ts=1000),
                    envelope(b, 3, "telemetry", "position", {"wearer": "w", "pos": {"lat": 1, "lon": 1}}, ts=1000)])
    (box,) = await rig.rows(boxes)
    assert box["backlog"] == 7 and box["heartbeat_ts"] == 2000 and box["last_seq"] == 4
    (latest,) = await rig.rows(positions_latest)
    assert latest["lat"] == 2
    assert await rig.count(positions) == 2


async def test_seq_gaps_subtract_what_the_box_explains(rig: Rig) -> None:
    b = "box-g"
    hb = {"outbox": {"depth": {}, "counters": {"evicted.telemetry": 2, "expired.telemetry": 1,
                                                "refused.event": 50}}}
    seqs = [1, 2, 3, 7, 8, 10]  # 4, 5, 6, 9 absent: 3 explained by the box, 1 missing
    await rig.send([envelope(b, s, "telemetry", "heartbeat" if s == 10 else "position",
                             hb if s == 10 else {}) for s in seqs])
    async with rig.db.connect() as conn:
        (g,) = await seq_gaps(conn, b)
        assert (g.min_seq, g.max_seq, g.stored, g.explained, g.missing) == (1, 10, 6, 3, 1)
        assert [x.box for x in await seq_gaps(conn)] == [b]


async def test_seq_counters_count_each_envelope_once_through_resends(rig: Rig) -> None:
    """boxes.stored/min_seq (kept at ingest, read by the boxes list) ignore resends, in a batch and later."""
    b = "box-c"
    first = [envelope(b, s, "telemetry", "position", {}) for s in (5, 6, 9)]
    await rig.send(first + first)  # resent in the same batch
    await rig.send([*first, envelope(b, 3, "event", "camera", {})])  # resent later, with one new lower seq
    (row,) = await rig.rows(boxes, boxes.c.id == b)
    assert (row["stored"], row["min_seq"], row["last_seq"]) == (4, 3, 9)
    assert rig.ingest.stats["duplicates"] == 6
    async with rig.db.connect() as conn:
        (g,) = await seq_gaps(conn, b)
        assert (g.min_seq, g.max_seq, g.stored, g.missing) == (3, 9, 4, 3)  # 4, 7, 8


async def test_a_message_the_database_refuses_is_quarantined_alone(rig: Rig) -> None:
    """The database refuses one row (a trigger, on either dialect): its batch is stored one by one, that
    message is quarantined with the database's reason, and every other one is stored and acknowledged."""
    if rig.db.dialect == "sqlite":
        ddl = ["CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.kind = 'poison' "
               "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"]
    else:
        ddl = ["CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.kind = 'poison' THEN "
               "RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
               "CREATE TRIGGER poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION poison()"]
    async with rig.db.begin() as conn:
        for stmt in ddl:
            await conn.exec_driver_sql(stmt)
    rig.store_errors_expected = 1
    b = "box-p"
    await rig.send([envelope(b, 1, "event", "x", {}), envelope(b, 2, "event", "poison", {}), sos(b, 3)])
    assert sorted(m["seq"] for m in await rig.rows(messages)) == [1, 3]
    (q,) = await rig.rows(quarantine)
    assert q["reason"].startswith("store error:") and "poisoned row" in q["reason"]
    assert q["topic"] == f"{P}/box/{b}/up/event/poison"
    assert await rig.count(alarms) == 1
    assert rig.ingest.stats["store_errors"] == 1 and rig.ingest.stats["quarantined"] == 1
