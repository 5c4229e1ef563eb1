"""GET /api/v1/events (Server-Sent Events) over real HTTP: the app served by uvicorn on a loopback port,
read by httpx as a browser would; events published to the EventHub arrive scope-filtered, heartbeats
keep the line, a closed client and a closed hub both end the stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from tests.county_api import Env, env_fixture  # noqa: F401 - the `env` fixture
from tests.support import free_port

TIMEOUT = 10.0


@asynccontextmanager
async def served(env: Env) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:  # uvicorn has no started event to wait on
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        env.hub.close()  # as the server does at shutdown: the streams end, uvicorn need not wait for them
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)


class Stream:
    """One open event stream: `await next_event()` -> (kind, data) or ("comment", text)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next_block(self) -> list[str]:
        block: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            async for line in self.lines:
                if line == "":
                    if block:
                        return block
                    continue
                block.append(line)
        return block  # the stream ended

    async def next_event(self, *, comments: bool = False) -> tuple[str, Any]:
        while True:
            block = await self.next_block()
            if not block:
                return "end", None
            fields = dict(line.split(": ", 1) for line in block if not line.startswith(":") and ": " in line)
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])
            if comments and any(line.startswith(":") for line in block):
                return "comment", [line for line in block if line.startswith(":")]


@asynccontextmanager
async def stream(base: str, env: Env, user: str, **params: str) -> AsyncIterator[Stream]:
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client, \
            client.stream("GET", "/api/v1/events", headers=env.auth(user), params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        s = Stream(response)
        first = await s.next_block()  # `retry:` and `: connected`: the subscription is open from here on
        assert ": connected" in first
        yield s


def alarm(alarm_id: str, box: str, **extra: Any) -> dict[str, Any]:
    return {"id": alarm_id, "box": box, "kind": "sos", "wearer": "w-1", "ts": 1, "state": "new", "pos": None,
            "assigned_to": None, **extra}


async def test_an_alarm_published_to_the_hub_reaches_the_stream(env: Env) -> None:
    async with served(env) as base, stream(base, env, "viewer") as s:
        env.hub.publish("alarm", alarm("a1:1", "a1"))
        env.hub.publish("receipt", {"cmd": "c1", "box": "b1", "state": "finished", "reason": None, "ts": 2})
        env.hub.publish("box", {"id": "stray-9", "state": "offline"})
        assert await s.next_event() == ("alarm", alarm("a1:1", "a1"))
        assert await s.next_event() == ("receipt", {"cmd": "c1", "box": "b1", "state": "finished",
                                                    "reason": None, "ts": 2})
        assert await s.next_event() == ("box", {"id": "stray-9", "state": "offline"})


async def test_events_are_scope_filtered_per_user(env: Env) -> None:
    async with served(env) as base, stream(base, env, "op-a") as township, stream(base, env, "gw-a") as worker:
        env.hub.publish("alarm", alarm("b1:1", "b1"))                       # town-b: neither
        env.hub.publish("box", {"id": "stray-9", "state": "online"})        # unregistered: county-wide only
        env.hub.publish("alarm", alarm("a1:1", "a1"))                       # town-a, not assigned: op-a only
        env.hub.publish("alarm", alarm("a1:1", "a1", state="assigned", assigned_to="gw-a"))
        env.hub.publish("receipt", {"cmd": "c", "box": "a2", "state": "finished", "reason": None, "ts": 1})
        assert (await township.next_event())[1]["id"] == "a1:1"
        assert (await township.next_event())[1]["state"] == "assigned"
        assert (await township.next_event())[0] == "receipt"
        kind, data = await worker.next_event()
        assert (kind, data["state"], data["assigned_to"]) == ("alarm", "assigned", "gw-a")
        assert (await worker.next_event())[0] == "receipt"


async def test_an_ack_through_the_api_is_on_the_stream(env: Env) -> None:
    await env.add_alarm("a1:1", "a1")
    async with served(env) as base, stream(base, env, "operator", kinds="alarm") as s:
        env.hub.publish("receipt", {"cmd": "c", "box": "a1", "state": "finished"})  # not asked for
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post("/api/v1/alarms/a1:1/ack", headers=env.auth("admin"))
            assert r.status_code == 200
        kind, data = await s.next_event()
        assert (kind, data["id"], data["state"], data["acked_by"]) == ("alarm", "a1:1", "acknowledged", "admin")


async def test_heartbeat_comments_while_quiet(env: Env) -> None:
    env.app.state.sse_heartbeat_s = 0.05
    async with served(env) as base, stream(base, env, "gw-b") as s:
        assert await s.next_event(comments=True) == ("comment", [": heartbeat"])


async def test_a_client_that_goes_away_is_unsubscribed(env: Env) -> None:
    env.app.state.sse_heartbeat_s = 0.05  # the next write notices the closed connection
    async with served(env) as base:
        async with stream(base, env, "viewer"):
            assert env.hub.subscribers == 1
        async with asyncio.timeout(TIMEOUT):
            while env.hub.subscribers:
                await asyncio.sleep(0.01)


async def test_closing_the_hub_ends_the_stream_cleanly(env: Env) -> None:
    async with served(env) as base, stream(base, env, "viewer") as s:
        env.hub.publish("alarm", alarm("a1:1", "a1"))
        env.hub.close()
        assert (await s.next_event())[0] == "alarm"  # what was queued still goes out
        assert await s.next_event() == ("end", None)
        assert env.hub.subscribers == 0


async def test_refusals_are_plain_json(env: Env) -> None:
    r = await env.client.get("/api/v1/events")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = await env.get("viewer", "/api/v1/events", params={"kinds": "alarm,gossip"})
    assert r.status_code == 400
