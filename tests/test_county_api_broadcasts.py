"""Broadcasts through the real app: signed with the county key, published QoS 1 not retained on a real
mosquitto, stored; the receipt board; review; cancel; resend; scope refusals (audited); SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from typing import Any

from agent.protocol import jws
from county.store.tables import broadcasts
from tests.county_api import (  # noqa: F401 - the `env` and `review_env` fixtures
    KID,
    NOW_MS,
    Env,
    box_side,
    env_fixture,
    review_env_fixture,
    wait_messages,
)

NOW_S = NOW_MS // 1000


def verify(env: Env, payload: bytes) -> dict[str, Any]:
    _header, body = jws.verify(payload, {KID: env.public_key})
    return body


async def marker(env: Env, collector: Any) -> list[Any]:
    """Everything published before this call has reached the box side (one connection keeps order)."""
    mark = f"marker-{uuid.uuid4()}".encode()  # unique: an earlier call's marker must not end this wait
    await env.publisher.publish("vc/v1/box/marker/cmd", mark)
    msgs = await wait_messages_until(collector, lambda ms: any(m.payload == mark for m in ms))
    return [m for m in msgs if not m.payload.startswith(b"marker-")]


async def wait_messages_until(collector: Any, pred: Any) -> list[Any]:
    import asyncio

    return await asyncio.to_thread(collector.wait_for, lambda ms: ms if pred(ms) else None, 10.0)


async def test_create_signs_publishes_qos1_not_retained_and_stores(env: Env) -> None:
    box = box_side(env.broker)
    try:
        r = await env.post("operator", "/api/v1/broadcasts", {
            "to": ["group:town-a", "box:b1"], "text": "今晚八点村委会开会", "class": "daily", "volume": 70,
            "start": "2026-12-01T20:00", "end": "2026-12-01T20:30"})
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["state"] == "sent" and sorted(out["boxes"]) == ["a1", "a2", "b1"]
        got = await marker(env, box)
    finally:
        box.stop()
    assert sorted(m.topic for m in got) == ["vc/v1/box/b1/cmd", "vc/v1/group/town-a/cmd"]
    assert all(m.retain is False for m in got)
    cmd = verify(env, got[0].payload)
    assert cmd["id"] == out["id"] and cmd["kind"] == "broadcast.play" and cmd["to"] == ["group:town-a", "box:b1"]
    # no offset = the county's timezone (Asia/Shanghai, UTC+8)
    start = int(dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC).timestamp())
    assert cmd["data"] | {} == {"class": "daily", "level": 3, "title": "今晚八点村委会开会",
                                "text": "今晚八点村委会开会", "audio": None, "start": start, "end": start + 1800,
                                "volume": 70}
    assert (cmd["iat"], cmd["exp"]) == (NOW_S, NOW_S + 86400)
    row = (await env.rows(broadcasts, broadcasts.c.id == out["id"]))[0]
    assert row["token"].encode() == got[0].payload == got[1].payload
    assert (row["state"], row["created_by"], row["targets"], sorted(row["boxes"])) == (
        "sent", "operator", ["group:town-a", "box:b1"], ["a1", "a2", "b1"])
    audit = await env.audit_rows("broadcast.create")
    assert audit[0]["actor"] == "operator" and audit[0]["target"] == out["id"]


async def test_audio_is_carried_inline_and_stored(env: Env) -> None:
    raw = b"ID3\x00fake mp3 bytes" * 10
    box = box_side(env.broker)
    try:
        r = await env.post("admin", "/api/v1/broadcasts", {
            "to": ["box:a1"], "audio_b64": base64.b64encode(raw).decode(), "audio_mime": "audio/mpeg",
            "class": "emergency", "title": "森林火警"})
        assert r.status_code == 201, r.text
        got = await marker(env, box)
    finally:
        box.stop()
    data = verify(env, got[0].payload)["data"]
    assert data["audio"] == {"mime": "audio/mpeg", "sha256": hashlib.sha256(raw).hexdigest(),
                             "b64": base64.b64encode(raw).decode()}
    assert (data["class"], data["level"], data["text"]) == ("emergency", 1, "")
    row = (await env.rows(broadcasts, broadcasts.c.id == r.json()["id"]))[0]
    assert row["audio"] == raw and row["audio_sha256"] == hashlib.sha256(raw).hexdigest()


async def test_bad_bodies_are_400_and_nothing_is_stored(env: Env) -> None:
    cases: list[dict[str, Any]] = [
        {"text": "x"},                                      # no targets
        {"to": "box:a1", "text": "x"},                       # not a list
        {"to": ["town-a"], "text": "x"},                     # not box:/group:
        {"to": ["box:a1"]},                                  # nothing to say
        {"to": ["box:a1"], "text": "x", "class": "loud"},
        {"to": ["box:a1"], "text": "x", "level": 9},
        {"to": ["box:a1"], "text": "x", "volume": 101},
        {"to": ["box:a1"], "text": "x", "start": "tomorrow-ish"},
        {"to": ["box:a1"], "text": "x", "start": "2026-12-02T10:00", "end": "2026-12-02T09:00"},
        {"to": ["box:a1"], "audio_b64": "!!!", "audio_mime": "audio/mpeg"},
        {"to": ["box:a1"], "audio_b64": "AAAA"},
        {"to": ["box:a1"], "audio_b64": "AAAA", "audio_mime": "text/html"},
        {"to": ["box:a1"], "text": "x", "colour": "red"},
        {"to": ["box:a1"], "text": "x", "ttl_s": 0},
    ]
    for body in cases:
        r = await env.post("operator", "/api/v1/broadcasts", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"] == "bad_request"
    big = base64.b64encode(b"\0" * (2 * 1024 * 1024 + 1)).decode()
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "audio_b64": big,
                                                          "audio_mime": "audio/mpeg"})
    assert r.status_code == 413
    assert await env.rows(broadcasts) == []


async def test_nobody_hears_is_422_with_the_reason(env: Env) -> None:
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:nobody-here"], "text": "x"})
    assert r.status_code == 422 and r.json()["reason"] == "nobody_hears"
    assert r.json()["unheard"] == ["group:nobody-here"] and "group:nobody-here" in r.json()["detail"]
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a", "group:typo"], "text": "x"})
    assert r.status_code == 422 and r.json()["unheard"] == ["group:typo"]
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:nobody-here"], "text": "x", "force": True})
    assert r.status_code == 422  # force cannot make a broadcast that reaches no box at all
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a", "group:typo"], "text": "x",
                                                          "force": True})
    assert r.status_code == 201 and sorted(r.json()["boxes"]) == ["a1", "a2"]
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "x",
                                                          "start": "2026-12-01T15:00"})  # 07:00 UTC: past
    assert r.status_code == 422 and r.json()["reason"] == "start_past"


async def test_township_operator_targeting_another_township_is_403_and_audited(env: Env) -> None:
    box = box_side(env.broker)
    try:
        for to in (["group:town-b"], ["box:b1"], ["box:a1", "box:b1"], ["box:stray-9"]):
            r = await env.post("op-a", "/api/v1/broadcasts", {"to": to, "text": "越权广播"})
            assert r.status_code == 403, to
            assert r.json()["error"] == "forbidden"
        r = await env.post("op-a", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "本镇广播"})
        assert r.status_code == 201
        got = await marker(env, box)
    finally:
        box.stop()
    assert [m.topic for m in got] == ["vc/v1/group/town-a/cmd"]  # the refused ones never reached the broker
    refused = await env.audit_rows("broadcast.refused")
    assert [(a["actor"], a["detail"]["targets"], a["detail"]["outside_scope"]) for a in refused] == [
        ("op-a", ["group:town-b"], ["b1"]), ("op-a", ["box:b1"], ["b1"]), ("op-a", ["box:a1", "box:b1"], ["b1"]),
        ("op-a", ["box:stray-9"], ["stray-9"])]
    assert len(await env.rows(broadcasts)) == 1


async def test_viewer_reviewer_gridworker_cannot_push(env: Env) -> None:
    for user in ("viewer", "reviewer", "gw-a"):
        r = await env.post(user, "/api/v1/broadcasts", {"to": ["box:a1"], "text": "x"})
        assert r.status_code == 403, user
    assert await env.rows(broadcasts) == []


async def test_receipt_board_one_row_per_targeted_box(env: Env) -> None:
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a", "box:b1"], "text": "x"})
    bid = r.json()["id"]
    await env.add_receipt(bid, "a1", "finished", ts=NOW_MS + 5000)
    await env.add_receipt(bid, "b1", "rejected", reason="expired", ts=NOW_MS + 6000)
    await env.add_receipt("other-cmd", "a2", "finished")
    r = await env.get("viewer", f"/api/v1/broadcasts/{bid}")
    assert r.status_code == 200
    board = {x["box"]: (x["state"], x["reason"], x["ts"]) for x in r.json()["receipts"]}
    assert board == {"a1": ("finished", None, NOW_MS + 5000), "a2": ("no_answer", None, None),
                     "b1": ("rejected", "expired", NOW_MS + 6000)}
    assert r.json()["id"] == bid and r.json()["state"] == "sent"
    # a township user sees only its own boxes' rows; one outside every box is refused
    assert {x["box"] for x in (await env.get("op-a", f"/api/v1/broadcasts/{bid}")).json()["receipts"]} == {
        "a1", "a2"}
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:b1"], "text": "y"})
    assert (await env.get("op-a", f"/api/v1/broadcasts/{r.json()['id']}")).status_code == 403
    assert (await env.get("viewer", "/api/v1/broadcasts/nope")).status_code == 404
    listed = (await env.get("viewer", "/api/v1/broadcasts")).json()
    assert [b["id"] for b in listed][:2] != [] and all("token" not in b and "audio" not in b for b in listed)


async def test_resend_republishes_the_same_token_to_boxes_with_no_answer_only(env: Env) -> None:
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a", "box:b1"], "text": "x"})
    bid = r.json()["id"]
    await env.add_receipt(bid, "a1", "finished")
    token = (await env.rows(broadcasts, broadcasts.c.id == bid))[0]["token"]
    box = box_side(env.broker)
    try:
        r = await env.post("operator", f"/api/v1/broadcasts/{bid}/resend")
        assert r.status_code == 200 and sorted(r.json()["resent_to"]) == ["a2", "b1"]
        got = await marker(env, box)
    finally:
        box.stop()
    assert sorted(m.topic for m in got) == ["vc/v1/box/a2/cmd", "vc/v1/box/b1/cmd"]
    assert all(m.payload.decode() == token and not m.retain for m in got)
    assert (await env.audit_rows("broadcast.resend"))[0]["detail"]["count"] == 2
    for user in ("viewer", "reviewer", "gw-a"):
        assert (await env.post(user, f"/api/v1/broadcasts/{bid}/resend")).status_code == 403


async def test_resend_of_an_expired_command_is_409(env: Env) -> None:
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "x", "ttl_s": 60})
    bid = r.json()["id"]
    env.app.state.clock = lambda: NOW_MS + 61_000
    r = await env.post("operator", f"/api/v1/broadcasts/{bid}/resend")
    assert r.status_code == 409 and r.json()["state"] == "expired"


async def test_cancel_signs_broadcast_cancel_to_the_same_targets(env: Env) -> None:
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "x"})
    bid = r.json()["id"]
    box = box_side(env.broker)
    try:
        r = await env.post("reviewer", f"/api/v1/broadcasts/{bid}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        got = await marker(env, box)
    finally:
        box.stop()
    assert [m.topic for m in got] == ["vc/v1/group/town-a/cmd"] and not got[0].retain
    cmd = verify(env, got[0].payload)
    assert (cmd["kind"], cmd["data"], cmd["to"], cmd["id"]) == (
        "broadcast.cancel", {"broadcast": bid}, ["group:town-a"], r.json()["cancel_id"])
    row = (await env.rows(broadcasts, broadcasts.c.id == bid))[0]
    assert (row["state"], row["cancelled_by"], row["cancelled_at"]) == ("cancelled", "reviewer", NOW_MS)
    assert (await env.post("operator", f"/api/v1/broadcasts/{bid}/cancel")).status_code == 409
    assert (await env.post("operator", f"/api/v1/broadcasts/{bid}/resend")).status_code == 409
    assert (await env.audit_rows("broadcast.cancel"))[0]["detail"]["cancel_id"] == cmd["id"]
    for user in ("viewer", "gw-a"):
        assert (await env.post(user, f"/api/v1/broadcasts/{bid}/cancel")).status_code == 403


async def test_review_daily_waits_for_a_different_reviewer(review_env: Env) -> None:
    env = review_env
    box = box_side(env.broker)
    try:
        r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "明早停水"})
        assert r.status_code == 201 and r.json()["state"] == "awaiting_review"
        bid = r.json()["id"]
        assert (await marker(env, box)) == []  # nothing signed, nothing sent
        row = (await env.rows(broadcasts, broadcasts.c.id == bid))[0]
        assert row["state"] == "awaiting_review" and row["token"] is None
        for user, status in (("operator", 403), ("op-a", 403), ("viewer", 403), ("gw-a", 403)):
            assert (await env.post(user, f"/api/v1/broadcasts/{bid}/approve")).status_code == status, user
        assert (await env.post("admin", f"/api/v1/broadcasts/{bid}/resend")).status_code == 409
        env.app.state.clock = lambda: NOW_MS + 600_000  # approved ten minutes later
        r = await env.post("rev-a", f"/api/v1/broadcasts/{bid}/approve")
        assert r.status_code == 200 and r.json()["state"] == "sent"
        got = await marker(env, box)
        assert (await env.post("reviewer", f"/api/v1/broadcasts/{bid}/approve")).status_code == 409
        # an emergency goes out at once, review or not
        r = await env.post("operator", "/api/v1/broadcasts",
                           {"to": ["box:a1"], "text": "山洪预警", "class": "emergency"})
        assert r.status_code == 201 and r.json()["state"] == "sent"
        got2 = await marker(env, box)
    finally:
        box.stop()
    assert [m.topic for m in got] == ["vc/v1/group/town-a/cmd"]
    cmd = verify(env, got[0].payload)
    assert cmd["id"] == bid and cmd["iat"] == NOW_S + 600 and cmd["exp"] == NOW_S + 600 + 86400
    row = (await env.rows(broadcasts, broadcasts.c.id == bid))[0]
    assert (row["state"], row["approved_by"], row["approved_at"]) == ("sent", "rev-a", NOW_MS + 600_000)
    assert row["token"].encode() == got[0].payload
    assert [verify(env, m.payload)["data"]["class"] for m in got2[len(got):]] == ["emergency"]
    assert [a["actor"] for a in await env.audit_rows("broadcast.approve")] == ["rev-a"]


async def test_review_author_cannot_approve_own_and_cancel_before_review(review_env: Env) -> None:
    env = review_env
    r = await env.post("admin", "/api/v1/broadcasts", {"to": ["box:b1"], "text": "x"})
    bid = r.json()["id"]
    r = await env.post("admin", f"/api/v1/broadcasts/{bid}/approve")
    assert r.status_code == 403 and "different user" in r.json()["detail"]
    assert (await env.post("rev-a", f"/api/v1/broadcasts/{bid}/approve")).status_code == 403  # b1: outside town-a
    r = await env.post("admin", f"/api/v1/broadcasts/{bid}/cancel")
    assert r.status_code == 200 and r.json()["cancel_id"] is None  # never signed: nothing to tell the boxes
    assert (await env.post("reviewer", f"/api/v1/broadcasts/{bid}/approve")).status_code == 409


async def test_publish_failure_is_503_publish_failed_and_resend_recovers(env: Env) -> None:
    env.publisher.timeout = 1.0
    env.broker.stop()
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "x"})
    assert r.status_code == 503 and r.json()["state"] == "publish_failed"
    bid = r.json()["id"]
    assert (await env.rows(broadcasts, broadcasts.c.id == bid))[0]["state"] == "publish_failed"
    env.broker.start()
    env.publisher.timeout = 15.0
    box = box_side(env.broker)
    try:
        r = await env.post("operator", f"/api/v1/broadcasts/{bid}/resend")
        assert r.status_code == 200, r.text
        got = await marker(env, box)
    finally:
        box.stop()
    assert "vc/v1/box/a1/cmd" in [m.topic for m in got]
    assert (await env.rows(broadcasts, broadcasts.c.id == bid))[0]["state"] == "sent"


async def test_receipts_from_the_wire_through_ingest_fill_the_board(env: Env) -> None:
    """The whole chain: POST -> the box side gets the signed command -> a box answers with a `cmd` receipt
    envelope on its up topic -> the real ingest stores it -> GET shows it; the silent box stays no_answer."""
    import asyncio
    import json

    from county.ingest import Ingest, IngestConfig

    ingest = Ingest(IngestConfig(urls=[env.broker.url], client_id="county-test-ingest", live=False), env.db, env.hub)
    await ingest.start()
    box = box_side(env.broker)
    try:
        await ingest.wait_subscribed()
        sub = env.hub.open(["receipt"])
        r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "x"})
        bid = r.json()["id"]
        got = await marker(env, box)
        assert verify(env, got[0].payload)["id"] == bid
        envelope = {"v": 1, "id": "a1:100", "box": "a1", "seq": 100, "ts": NOW_MS + 3000, "class": "receipt",
                    "kind": "cmd", "data": {"cmd": bid, "state": "finished"}}
        box.publish("vc/v1/box/a1/up/receipt/cmd", json.dumps(envelope))
        async with asyncio.timeout(10):
            while True:
                board = {x["box"]: x["state"] for x in (await env.get("viewer", f"/api/v1/broadcasts/{bid}")).json()[
                    "receipts"]}
                if board["a1"] != "no_answer":
                    break
                await ingest.committed.wait()
                ingest.committed.clear()
        assert board == {"a1": "finished", "a2": "no_answer"}
        events = [e for e in iter(sub.get_nowait, None) if e.data.get("cmd") == bid]
        assert [(e.data["box"], e.data["state"]) for e in events] == [("a1", "finished")]
        sub.close()
    finally:
        box.stop()
        await ingest.close()


async def test_list_is_newest_first_and_a_scoped_page_reads_past_other_townships(env: Env) -> None:
    ids = []
    for i in range(5):
        env.app.state.clock = lambda i=i: NOW_MS + i * 1000
        to = ["box:a1"] if i < 2 else ["box:b1"]  # the three newest are town-b's
        ids.append((await env.post("operator", "/api/v1/broadcasts", {"to": to, "text": f"n{i}"})).json()["id"])
    everything = (await env.get("viewer", "/api/v1/broadcasts", params={"limit": 2})).json()
    assert [b["id"] for b in everything] == [ids[4], ids[3]]
    township = (await env.get("op-a", "/api/v1/broadcasts", params={"limit": 2})).json()
    assert [b["id"] for b in township] == [ids[1], ids[0]]
    assert all("token" not in b and "audio" not in b for b in township)
    assert (await env.get("gw-a", "/api/v1/broadcasts")).status_code == 403
