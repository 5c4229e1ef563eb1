"""Escalation of unacknowledged alarms to a webhook, against a real HTTP receiver on loopback
(http.server in a thread), on SQLite and PostgreSQL: retries with backoff, a receiver failing first then
succeeding, exactly one delivery with two instances, nothing more once acknowledged."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from county.server.config import parse_config
from county.server.escalation import Escalator, start_escalation
from county.store.tables import alarms
from tests.county_api import NOW_MS, Env, env_fixture  # noqa: F401 - the `env` fixture

AFTER_S = 300


class Receiver:
    """A webhook receiver: answers each POST with the next status of `script` (then 200), records the bodies.
    `hold` (optional) is waited on before answering the first request."""

    def __init__(self, script: list[int], hold: threading.Event | None = None) -> None:
        self.script = list(script)
        self.hold = hold
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.cond:
                    receiver.bodies.append(json.loads(body))
                    receiver.headers.append(dict(self.headers))
                    first = len(receiver.bodies) == 1
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.cond.notify_all()
                if first and receiver.hold is not None:
                    receiver.hold.wait(10)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.bodies) >= n, timeout):
                raise TimeoutError(f"{len(self.bodies)} of {n} requests")
            return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(script: list[int], hold: threading.Event | None = None) -> Receiver:
        made.append(Receiver(script, hold))
        return made[-1]

    yield make
    for r in made:
        r.close()


def escalator(env: Env, url: str, at_ms: int = NOW_MS, **kw: Any) -> Escalator:
    kw.setdefault("retries", 3)
    kw.setdefault("backoff_s", 0.01)
    return Escalator(env.db, webhook=url, after_s=AFTER_S, regions=env.regions, hub=env.hub,
                     clock=lambda: at_ms / 1000, **kw)


async def alarm_row(env: Env, alarm_id: str) -> dict[str, Any]:
    return (await env.rows(alarms, alarms.c.id == alarm_id))[0]


async def test_failing_then_succeeding_receiver_gets_the_alarm_once_delivered(env: Env, receiver_factory: Any,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    rx = receiver_factory([500])
    await env.add_alarm("a1:1", "a1", ts=NOW_MS - 900_000, received=NOW_MS - 400_000)   # due
    await env.add_alarm("a1:2", "a1", received=NOW_MS - 400_000, state="acknowledged")  # handled
    await env.add_alarm("a2:1", "a2", received=NOW_MS - 10_000)                         # not yet due
    sub = env.hub.open(["alarm"])
    assert await escalator(env, rx.url).run_once() == 1
    bodies = rx.wait(2)
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert rx.headers[0]["Content-Type"] == "application/json"
    body = bodies[1]
    assert (body["event"], body["alarm"]["id"], body["alarm"]["box"], body["escalation"]) == (
        "alarm.unacknowledged", "a1:1", "a1", 1)
    assert body["unacknowledged_s"] == 400 and body["alarm"]["box_name"] == "甲一村委会"
    row = await alarm_row(env, "a1:1")
    assert (row["escalated_at"], row["escalations"], row["state"]) == (NOW_MS, 1, "new")
    assert (await alarm_row(env, "a2:1"))["escalated_at"] is None
    audit = await env.audit_rows("alarm.escalate")
    assert [(a["actor"], a["target"], a["detail"]["attempts"], a["detail"]["status"]) for a in audit] == [
        ("escalation", "a1:1", 2, 200)]
    event = sub.get_nowait()
    assert event is not None and event.data["escalations"] == 1
    sub.close()
    assert "s3cret" not in caplog.text and "HTTP 500" in caplog.text
    # the same round again finds nothing; another escalate_after_s later it goes again
    assert await escalator(env, rx.url).run_once() == 0
    assert await escalator(env, rx.url, NOW_MS + AFTER_S * 1000).run_once() == 2  # a2:1 is due by then too
    again = {b["alarm"]["id"]: b["escalation"] for b in rx.wait(4)[2:]}
    assert again == {"a1:1": 2, "a2:1": 1}
    assert (await alarm_row(env, "a1:1"))["escalations"] == 2


async def test_a_receiver_that_never_answers_2xx_is_tried_retries_plus_one_times(env: Env,
                                                                                  receiver_factory: Any) -> None:
    rx = receiver_factory([503] * 10)
    await env.add_alarm("a1:1", "a1", received=NOW_MS - 400_000)
    esc = escalator(env, rx.url, retries=2)
    assert await esc.run_once() == 0
    assert len(rx.wait(3)) == 3 and esc.failed == 1
    row = await alarm_row(env, "a1:1")
    assert (row["escalated_at"], row["escalations"]) == (NOW_MS, 0)  # claimed, not delivered
    assert await esc.run_once() == 0 and len(rx.bodies) == 3  # not hammered: next try a period later
    assert await env.audit_rows("alarm.escalate") == []


async def test_an_unreachable_webhook_is_logged_by_host_only(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    from tests.support import free_port

    await env.add_alarm("a1:1", "a1", received=NOW_MS - 400_000)
    url = f"http://user:pw@127.0.0.1:{free_port()}/x?key=topsecret"
    assert await escalator(env, url, retries=1).run_once() == 0
    assert "topsecret" not in caplog.text and "pw" not in caplog.text and "127.0.0.1" in caplog.text


async def test_two_instances_escalate_an_alarm_once(env: Env, receiver_factory: Any) -> None:
    rx = receiver_factory([])
    await env.add_alarm("a1:1", "a1", received=NOW_MS - 400_000)
    results = await asyncio.gather(escalator(env, rx.url).run_once(), escalator(env, rx.url).run_once())
    assert sorted(results) == [0, 1]
    assert len(rx.wait(1)) == 1 and (await alarm_row(env, "a1:1"))["escalations"] == 1


async def test_acknowledged_during_the_retries_stops_them(env: Env, receiver_factory: Any) -> None:
    hold = threading.Event()
    rx = receiver_factory([500, 500, 500], hold)
    await env.add_alarm("a1:1", "a1", received=NOW_MS - 400_000)
    run = asyncio.create_task(escalator(env, rx.url).run_once())
    await asyncio.to_thread(rx.wait, 1)  # the first try is being answered (held)
    assert (await env.post("operator", "/api/v1/alarms/a1:1/ack")).status_code == 200
    hold.set()
    assert await run == 0
    assert len(rx.bodies) == 1 and (await alarm_row(env, "a1:1"))["escalations"] == 0


async def test_start_escalation_runs_in_the_background_until_cancelled(env: Env, receiver_factory: Any,
                                                                      tmp_path: Any) -> None:
    rx = receiver_factory([500])
    config = parse_config({"alarms": {"webhook": rx.url, "escalate_after_s": 1, "webhook_retries": 2}})
    assert start_escalation(env.db, parse_config({})) is None  # no webhook: no task
    await env.add_alarm("a1:1", "a1", received=int(time.time() * 1000) - 60_000)
    task = start_escalation(env.db, config, regions=env.regions, tick_s=0.01, backoff_s=0.01)
    assert task is not None
    try:
        await asyncio.to_thread(rx.wait, 2)
        async with asyncio.timeout(10):
            while (await alarm_row(env, "a1:1"))["escalations"] != 1:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
