"""GET /api/v1/boxes and GET /api/v1/messages through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy import update

from agent.protocol.envelope import MsgClass
from agent.protocol.topics import Topics
from county.ingest import Good, Incoming, Store, parse
from county.regions import parse_regions
from county.store.tables import boxes
from tests.county_api import NOW_MS, PASSWORD, REGIONS, Env, env_fixture  # noqa: F401 - the `env` fixture

UNICODE_RAW = '{"v":1,  "id":"a1:%d", "box":"a1", "seq":%d, "ts":%d, "class":"event", "kind":"camera", ' \
              '"data":{"note":"勐楼 \\u2028 x"}}'


async def _store(env: Env, box: str, seqs: list[int]) -> list[str]:
    """Stores the envelopes the way ingest does (county.ingest.Store: messages and the box's counters)."""
    raws = [UNICODE_RAW.replace("a1", box) % (s, s, NOW_MS + s) for s in seqs]
    topics = Topics()
    items = [Incoming(topics.up(box, MsgClass.EVENT, "camera"), r.encode(), 0, 1, False, 0, NOW_MS + s)
             for s, r in zip(seqs, raws, strict=True)]
    parsed = [(it, parse(topics, it)) for it in items]
    assert all(isinstance(p, Good) for _, p in parsed), parsed
    out = await Store(env.db).write(parsed)
    assert out.stored == len(set(seqs))
    return raws


async def test_boxes_named_from_the_regions_file_unregistered_kept(env: Env) -> None:
    r = await env.get("admin", "/api/v1/boxes")
    assert r.status_code == 200
    got = {b["id"]: b for b in r.json()}
    assert set(got) == {"a1", "a2", "b1", "stray-9"}
    assert {k: got["a1"][k] for k in ("id", "name", "village", "township", "state", "last_seen", "backlog",
                                      "version")} == {
        "id": "a1", "name": "甲一村委会", "village": "va1", "township": "town-a", "state": "online",
        "last_seen": NOW_MS - 1000, "backlog": 0, "version": "1.4.0"}
    assert got["a1"]["village_name"] == "甲一村" and got["a1"]["township_name"] == "甲镇"
    assert got["stray-9"]["name"] == "unregistered" and got["stray-9"]["village"] is None
    assert got["stray-9"]["registered"] is False and got["stray-9"]["backlog"] == 3


async def test_a_registered_box_that_never_reported_is_listed_unknown(env: Env) -> None:
    more = json.loads(json.dumps(REGIONS))
    more["township"][1]["village"][0]["box"].append({"id": "b2", "name": "乙二", "groups": ["town-b"]})
    env.app.state.regions = parse_regions(more)
    got = {b["id"]: b for b in (await env.get("admin", "/api/v1/boxes")).json()}
    assert got["b2"]["state"] == "unknown" and got["b2"]["last_seen"] is None and got["b2"]["name"] == "乙二"


async def test_boxes_are_scope_filtered(env: Env) -> None:
    assert {b["id"] for b in (await env.get("op-a", "/api/v1/boxes")).json()} == {"a1", "a2"}
    assert {b["id"] for b in (await env.get("gw-b", "/api/v1/boxes")).json()} == {"b1"}
    assert (await env.get(None, "/api/v1/boxes")).status_code == 401


async def test_messages_exactly_as_received_ascending_from_since_seq(env: Env) -> None:
    raws = await _store(env, "a1", [5, 3, 4, 1, 2])
    by_seq = dict(zip([5, 3, 4, 1, 2], raws, strict=True))
    r = await env.get("viewer", "/api/v1/messages", params={"box": "a1", "since_seq": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    # byte for byte: the stored texts joined, nothing re-encoded (the double space, the \u2028 escape)
    assert r.content.decode() == "[" + ",".join(by_seq[s] for s in (3, 4, 5)) + "]"
    assert [m["seq"] for m in r.json()] == [3, 4, 5]
    assert "X-Next-Since-Seq" not in r.headers
    everything = (await env.get("viewer", "/api/v1/messages", params={"box": "a1"})).json()
    assert [m["seq"] for m in everything] == [1, 2, 3, 4, 5]


async def test_messages_page_with_limit_and_next_since_seq(env: Env) -> None:
    await _store(env, "a1", list(range(1, 8)))
    seen: list[int] = []
    since = 0
    while True:
        r = await env.get("admin", "/api/v1/messages", params={"box": "a1", "since_seq": since, "limit": 3})
        page = [m["seq"] for m in r.json()]
        seen += page
        if "X-Next-Since-Seq" not in r.headers:
            break
        since = int(r.headers["X-Next-Since-Seq"])
        assert since == page[-1]
    assert seen == list(range(1, 8))


async def test_messages_bad_input_and_scope(env: Env) -> None:
    await _store(env, "b1", [1])
    assert (await env.get("admin", "/api/v1/messages")).status_code == 400
    assert (await env.get("admin", "/api/v1/messages", params={"box": "a/../b"})).status_code == 400
    assert (await env.get("admin", "/api/v1/messages", params={"box": "a1", "limit": 0})).status_code == 400
    assert (await env.get("admin", "/api/v1/messages", params={"box": "a1", "since_seq": "x"})).status_code == 400
    r = await env.get("op-a", "/api/v1/messages", params={"box": "b1"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert (await env.get("op-a", "/api/v1/messages", params={"box": "stray-9"})).status_code == 403
    assert (await env.get("admin", "/api/v1/messages", params={"box": "b1"})).json()[0]["seq"] == 1


async def test_login_through_the_api_then_list(env: Env) -> None:
    r = await env.client.post("/api/v1/session", json={"username": "viewer", "password": PASSWORD})
    assert r.status_code == 200
    r = await env.client.get("/api/v1/boxes", headers={"Authorization": f"Bearer {r.json()['token']}"})
    assert r.status_code == 200 and len(r.json()) == 4


async def test_boxes_show_the_seq_gap_the_boxes_counters_do_not_explain(env: Env) -> None:
    # a1: seq 1..10 stored but 4 and 7; its newest heartbeat says it evicted one telemetry envelope itself
    await _store(env, "a1", [s for s in range(1, 11) if s not in (4, 7)])
    # a2: the same two holes, no heartbeat: both are missing
    await _store(env, "a2", [s for s in range(1, 11) if s not in (4, 7)])
    async with env.db.begin() as conn:
        await conn.execute(update(boxes).where(boxes.c.id == "a1").values(
            heartbeat={"outbox": {"counters": {"evicted.telemetry": 1, "sent": 8, "refused": 5}}}))
    got = {b["id"]: b for b in (await env.get("viewer", "/api/v1/boxes")).json()}
    assert got["a1"]["missing"] == 1
    assert got["a2"]["missing"] == 2
    assert got["b1"]["missing"] is None  # nothing of it stored: no range to speak of
    # counters explaining more than the gap never make it negative
    async with env.db.begin() as conn:
        await conn.execute(update(boxes).where(boxes.c.id == "a1").values(
            heartbeat={"outbox": {"counters": {"evicted.telemetry": 3, "expired.telemetry": 2}}}))
    got = {b["id"]: b for b in (await env.get("op-a", "/api/v1/boxes")).json()}
    assert got["a1"]["missing"] == 0 and set(got) == {"a1", "a2"}
