"""`village county status` against a real mosquitto: retained box states, heartbeats, camera reports."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.topics import Topics
from county.status import _overlap, add_arguments, backlog, parse_period, run_status, village_of

T = Topics()


def args_for(url: str, db: Path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--broker", url, "--db", str(db), "--listen", "0.5", *extra])


def status(url: str, db: Path, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = asyncio.run(run_status(args_for(url, db, *extra), out))
    return rc, out.getvalue()


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def publish_env(collector: Any, box: str, seq: int, ts_ms: int, cls: MsgClass, kind: str, data: dict) -> None:
    collector.publish(T.up(box, cls, kind), Envelope(box, seq, ts_ms, cls, kind, data).encode())


def test_status_rows_and_village_rates(broker, collector, tmp_path):
    db = tmp_path / "status.db"
    now_s = time.time()
    now = int(now_s * 1000)
    collector.publish(T.state("lhk-menglou-001"), json.dumps({"state": "online", "ts": int(now_s), "version": "0.1.0"}),
                      retain=True)
    collector.publish(T.state("lhk-menglou-002"), json.dumps({"state": "offline", "ts": int(now_s) - 600}), retain=True)
    collector.publish(T.state("xyz-cun-001"), json.dumps({"state": "online", "ts": int(now_s)}), retain=True)

    # first run: a fresh history sees only the retained states, and opens the persistent session
    rc, out = status(broker.url, db, "--json")
    assert rc == 0
    rows = {r["box"]: r for r in lines(out) if "box" in r}
    assert {b: r["state"] for b, r in rows.items()} == {
        "lhk-menglou-001": "online", "lhk-menglou-002": "offline", "xyz-cun-001": "online"}
    assert rows["lhk-menglou-001"]["cameras_total"] == 0

    # the boxes report while no console runs; the broker keeps it for the status session
    hour = 3600 * 1000
    publish_env(collector, "lhk-menglou-001", 10, now - 5000, MsgClass.TELEMETRY, "heartbeat",
                {"uptime_s": 99, "outbox": {"depth": {"alarm": 0, "receipt": 1, "event": 2, "telemetry": 4}},
                 "disk_free_mb": 900, "version": "0.1.0"})
    publish_env(collector, "lhk-menglou-001", 11, now - hour, MsgClass.TELEMETRY, "cameras", {
        "from": now - 2 * hour, "to": now - hour, "summary": {"online": 2, "total": 2},
        "cameras": [
            {"camera": "c1", "state": "online", "reason": None, "since": now - 3 * hour,
             "seconds": {"online": 3600.0, "degraded": 0, "offline": 0, "unknown": 0, "maintenance": 0}},
            {"camera": "c2", "state": "online", "reason": None, "since": now - 3 * hour,
             "seconds": {"online": 3600.0}},
        ]})
    publish_env(collector, "lhk-menglou-001", 12, now, MsgClass.TELEMETRY, "cameras", {
        "from": now - hour, "to": now, "summary": {"online": 1, "offline": 1, "total": 2},
        "cameras": [
            {"camera": "c1", "state": "online", "reason": None, "since": now - 3 * hour,
             "seconds": {"online": 3600.0}},
            {"camera": "c2", "state": "offline", "reason": "timeout", "since": now - hour,
             "seconds": {"offline": 3600.0}},
        ]})
    # a later event: c2 came back (the status must follow the newest word)
    publish_env(collector, "lhk-menglou-001", 13, now + 1000, MsgClass.EVENT, "camera",
                {"camera": "c2", "state": "online", "reason": None, "since": now + 1000})
    # the same telemetry delivered twice (at-least-once) must not count twice
    publish_env(collector, "lhk-menglou-001", 12, now, MsgClass.TELEMETRY, "cameras", {
        "from": now - hour, "to": now, "cameras": [
            {"camera": "c1", "state": "online", "seconds": {"online": 3600.0}},
            {"camera": "c2", "state": "offline", "seconds": {"offline": 3600.0}}]})
    publish_env(collector, "xyz-cun-001", 3, now, MsgClass.TELEMETRY, "cameras", {
        "from": now - hour, "to": now, "cameras": [
            {"camera": "k1", "state": "unknown", "reason": "agent_down", "seconds": {"unknown": 3600.0}}]})

    rc, out = status(broker.url, db, "--json", "--since", "24h")
    assert rc == 0
    got = lines(out)
    rows = {r["box"]: r for r in got if "box" in r}
    villages = {v["village"]: v for v in got if "village" in v}
    b1 = rows["lhk-menglou-001"]
    assert (b1["backlog"], b1["cameras_online"], b1["cameras_total"]) == (7, 2, 2)
    assert b1["last_seen"] == now + 1000 and b1["version"] == "0.1.0"
    assert rows["xyz-cun-001"]["cameras_online"] == 0 and rows["xyz-cun-001"]["cameras_total"] == 1
    # 24 h: c1 online 2 h, c2 online 1 h + offline 1 h -> 3 of 4 camera-hours
    assert villages["lhk-menglou"]["online_rate"] == 0.75 and villages["lhk-menglou"]["boxes"] == 2
    assert villages["xyz-cun"]["online_rate"] is None and villages["xyz-cun"]["observed"] == 0.0

    # a narrower window takes only its share of the last period: c1 and c2 half an hour each
    rc, out = status(broker.url, db, "--json", "--since", "30m")
    village = next(v for v in lines(out) if v.get("village") == "lhk-menglou")
    assert village["online_rate"] == 0.5

    # the text form: one row per box, then the villages
    rc, out = status(broker.url, db)
    assert rc == 0
    assert "lhk-menglou-001  online" in out and "2/2" in out and "ONLINE RATE 1d" in out
    assert "75.0%" in out


def test_status_through_the_county_cli(broker, collector, tmp_path, capsys):
    from county.cli import main

    collector.publish(T.state("b-7"), json.dumps({"state": "online", "ts": int(time.time())}), retain=True)
    rc = main(["status", "--broker", broker.url, "--db", str(tmp_path / "s.db"), "--listen", "0.3", "--json"])
    assert rc == 0
    (row,) = [r for r in lines(capsys.readouterr().out) if "box" in r]
    assert row["box"] == "b-7" and row["state"] == "online"


def test_status_unreachable_broker_is_one_line(tmp_path, capsys):
    from tests.support import free_port

    rc, out = status(f"mqtt://u:Secret-Pw@127.0.0.1:{free_port()}", tmp_path / "s.db")
    assert rc == 1 and out == ""
    err = capsys.readouterr().err
    assert "cannot reach broker" in err and "Secret-Pw" not in err


def test_helpers():
    assert parse_period("90") == 90 and parse_period("30m") == 1800 and parse_period("7d") == 7 * 86400
    with pytest.raises(argparse.ArgumentTypeError):
        parse_period("soon")
    assert village_of("lhk-menglou-001", {}) == "lhk-menglou"
    assert village_of("standalone", {}) == "standalone"
    assert village_of("lhk-menglou-001", {"lhk-menglou-001": "勐楼村"}) == "勐楼村"
    assert backlog({"outbox": {"depth": {"alarm": 1, "event": 2}}}) == 3
    assert backlog({"outbox": {"depth": 5}}) == 5 and backlog({}) is None
    assert _overlap(0, 100, 50, 200) == 0.5 and _overlap(0, 100, 200, 300) == 0.0
