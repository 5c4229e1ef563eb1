"""The county server's live WebSocket (`/ws/v1/live`) served by real uvicorn over a real database (SQLite and
PostgreSQL), with the real publisher on mosquitto, and a real box (link, router, broadcast service, live
player, libopus) hearing it. The client is a Python WebSocket client sending Opus frames the way the page's
WebCodecs encoder does (20 ms frames, 48 kHz mono)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from cryptography.hazmat.primitives import serialization

from agent.opus import Encoder
from county.server.users import create_session
from county.store.tables import broadcasts
from sim.live_audio import click_train, find_clicks
from tests.county_api import Env, close_env, open_env
from tests.live_support import Box, County, box_config, need_opus, running, same_rhythm
from tests.support import Collector, Mosquitto, free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("opus")]


@pytest.fixture
def opus() -> None:
    need_opus()

CLICKS = [0.3, 1.0, 1.6]


@contextlib.asynccontextmanager
async def served(db_url: str, broker: Mosquitto, tmp: Path) -> AsyncIterator[tuple[Env, str]]:
    env = await open_env(db_url, broker, tmp)
    # the boxes judge the command by the real clock: the app runs on it too, with sessions made for it
    env.app.state.clock = lambda: int(time.time() * 1000)
    async with env.db.begin() as conn:
        for name in list(env.tokens):
            env.tokens[name] = (await create_session(conn, name, int(time.time() * 1000), 3_600_000)).token
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning",
                                           ws="websockets-sansio", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield env, f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        for t in list(getattr(env.app.state, "live_tasks", None) or ()):  # a fallback still waiting
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        audio = getattr(env.app.state, "live_audio", None)
        if audio is not None:
            await audio.close()
        await close_env(env)


def frames(pcm: bytes, frame_ms: int = 20) -> list[bytes]:
    enc = Encoder(48000, 1)
    step = 48000 * frame_ms // 1000 * 2
    return [enc.encode(pcm[i:i + step]) for i in range(0, len(pcm) - step + 1, step)]


async def speak(ws: Any, opus: list[bytes], frame_ms: int = 20) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, f in enumerate(opus):
        await asyncio.sleep(max(0.0, t0 + (i + 1) * frame_ms / 1000 - loop.time()))
        await ws.send(f)


async def test_a_session_from_the_websocket_plays_on_the_box(db_url: str, broker: Mosquitto, collector: Collector,
                                                            tmp_path: Path) -> None:
    async with served(db_url, broker, tmp_path) as (env, host):
        pub = tmp_path / "county.pub"
        pub.write_bytes(env.public_key.public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
        box = Box(box_config(tmp_path, broker.url, pub, box="a1"))
        county = County(collector, None, box="a1")  # type: ignore[arg-type]  # reads receipts only
        async with running(box, collector):
            async with websockets.connect(f"ws://{host}/ws/v1/live", additional_headers=env.auth("operator")) as ws:
                await ws.send(json.dumps({"type": "start", "to": ["box:a1"], "class": "emergency", "title": "测试"}))
                started = json.loads(await ws.recv())
                assert started["type"] == "started" and started["boxes"] == ["a1"], started
                await county.wait(started["id"], "started")
                await speak(ws, frames(click_train(CLICKS, 2.2)))
                await ws.send(json.dumps({"type": "end"}))
                ended = json.loads(await ws.recv())
            finished = await county.wait(started["id"], "finished")
            await asyncio.to_thread(collector.wait_for, lambda _: not box.relay.is_on)
        rows = await env.rows(broadcasts, broadcasts.c.id == started["id"])
        audits = [a["action"] for a in await env.audit_rows()]
    assert ended["type"] == "ended" and ended["end"] == "ended" and ended["frames"] == 110
    assert finished["end"] == "ended" and finished["packets"]["lost"] == 0
    assert finished["packets"]["received"] == ended["packets"]
    same_rhythm(CLICKS, find_clicks(box.speaker.pcm()), finished)
    assert box.relay.events() == ["off", "on", "off"]
    assert rows[0]["audio_mime"] == "application/x-village-live" and rows[0]["state"] == "sent"
    assert "broadcast.live" in audits and "broadcast.live.end" in audits


async def test_the_websocket_refuses_before_anything_is_sent(db_url: str, broker: Mosquitto, collector: Collector,
                                                             tmp_path: Path) -> None:
    async with served(db_url, broker, tmp_path) as (env, host):
        url = f"ws://{host}/ws/v1/live"
        cookie = {"Cookie": f"vc_session={env.tokens['operator']}"}
        # a cookie session from another site's page: refused at the handshake (CSRF for WebSockets)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=cookie, origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        # the same cookie from the server's own origin is let in
        async with websockets.connect(url, additional_headers=cookie, origin=f"http://{host}") as ws:
            await ws.send(json.dumps({"type": "start", "to": ["group:nobody-here"]}))
            assert json.loads(await ws.recv())["status"] == 422  # nobody_hears: nothing is sent

        async def answer(user: str | None, start: dict[str, Any]) -> dict[str, Any]:
            headers = env.auth(user) if user else {}
            async with websockets.connect(url, additional_headers=headers) as ws:
                try:
                    await ws.send(json.dumps({"type": "start", **start}))
                    return json.loads(await ws.recv())  # type: ignore[no-any-return]
                except websockets.ConnectionClosed:  # refused before the start was read: the code says it
                    assert ws.close_code is not None
                    return {"status": ws.close_code - 4000}

        assert (await answer(None, {"to": ["box:a1"]}))["status"] == 401
        assert (await answer("viewer", {"to": ["box:a1"]}))["status"] == 403
        assert (await answer("op-a", {"to": ["box:b1"]}))["status"] == 403  # outside her township
        assert (await answer("operator", {"to": ["box:a1"], "class": "loud"}))["status"] == 400
        rows = await env.rows(broadcasts)
        denied = await env.audit_rows("denied")
    assert rows == []
    assert not [m for m in collector.snapshot() if m.topic.endswith("/cmd")]
    assert any(d["detail"].get("why") == "origin" for d in denied)


async def test_a_box_that_heard_it_poorly_gets_the_recording_later(db_url: str, broker: Mosquitto,
                                                                    collector: Collector, tmp_path: Path) -> None:
    """a1 hears the session over a good link; a2's link stalls for 1.5 s in the middle (a cell handover):
    its receipt says link_poor, and the server sends a2, and only a2, the recording as a broadcast.play
    marked live_fallback, which a2 plays as a recorded broadcast. The recording holds the speech."""
    from county.ingest import Ingest, IngestConfig
    from sim.netem import NetemProxy

    async with served(db_url, broker, tmp_path) as (env, host):
        env.app.state.live_fallback_after_s = 1.0
        ingest = Ingest(IngestConfig(urls=[broker.url], client_id="live-test-ingest", live=False), env.db, env.hub)
        await ingest.start()
        pub = tmp_path / "county.pub"
        pub.write_bytes(env.public_key.public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
        try:
            await ingest.wait_subscribed()
            async with NetemProxy("127.0.0.1", broker.port) as proxy:
                good = Box(box_config(tmp_path, broker.url, pub, box="a1"))
                poor = Box(box_config(tmp_path, proxy.url, pub, box="a2", live_silence_s=3.0))
                county_a2 = County(collector, None, box="a2")  # type: ignore[arg-type]
                async with running(good, collector), running(poor, collector):
                    async with websockets.connect(f"ws://{host}/ws/v1/live",
                                                  additional_headers=env.auth("operator")) as ws:
                        await ws.send(json.dumps({"type": "start", "to": ["box:a1", "box:a2"], "class": "emergency"}))
                        started = json.loads(await ws.recv())
                        await county_a2.wait(started["id"], "started")
                        opus = frames(click_train([0.3, 0.9, 2.6, 3.1], 3.4))
                        await speak(ws, opus[:50])
                        stall = asyncio.create_task(proxy.stall(1.5))
                        await speak(ws, opus[50:])
                        await stall
                        await ws.send(json.dumps({"type": "end"}))
                        await ws.recv()
                    live_done = await county_a2.wait(started["id"], "finished")

                    def fallback_of(box: str) -> list[dict[str, Any]]:
                        return [e["data"] for e in collector.envelopes() if e["box"] == box and e["kind"] == "cmd"
                                and e["data"].get("live_fallback") == started["session"]]

                    await asyncio.to_thread(collector.wait_for, lambda _: any(
                        r["state"] == "finished" for r in fallback_of("a2")), 40)
                    good_player = good.player.events()
                    poor_player = poor.player.events()
            rows = await env.rows(broadcasts, broadcasts.c.audio_mime == "audio/ogg")
            audits = await env.audit_rows("broadcast.live.fallback")
        finally:
            await ingest.close()
    assert live_done["link_poor"] is True and live_done["packets"]["late"] > 0, live_done["packets"]
    assert [r["state"] for r in fallback_of("a2")] == ["started", "finished"]
    assert fallback_of("a1") == []
    assert good_player == []
    assert [e[0] for e in poor_player] == ["play", "end"] and poor_player[0][1].endswith(".ogg")
    assert len(rows) == 1 and rows[0]["boxes"] == ["a2"] and audits[0]["detail"]["boxes"] == ["a2"]
    pcm = (await asyncio.to_thread(subprocess.run, ["ffmpeg", "-v", "error", "-i", "-", "-f", "s16le", "-ac", "1",
                                                    "-ar", "48000", "-"], input=rows[0]["audio"], capture_output=True,
                                   check=True)).stdout
    got = find_clicks(pcm)
    assert [round(b - a, 1) for a, b in itertools.pairwise(got)] == [0.6, 1.7, 0.5], got


async def test_an_open_socket_that_goes_quiet_or_runs_past_max_s_is_ended_by_the_server(
        db_url: str, broker: Mosquitto, collector: Collector, tmp_path: Path) -> None:
    if "postgresql" in db_url:
        pytest.skip("the server's timers, not the database: SQLite is enough")
    async with served(db_url, broker, tmp_path) as (env, host):
        env.app.state.live_idle_s = 0.5
        audio = Collector(broker.url, topics=("vc/v1/live/+/audio",)).start()
        try:
            async with websockets.connect(f"ws://{host}/ws/v1/live", additional_headers=env.auth("operator")) as ws:
                await ws.send(json.dumps({"type": "start", "to": ["box:a1"]}))
                started = json.loads(await ws.recv())
                await speak(ws, frames(click_train([0.1], 0.3)))  # then nothing, socket open (a hung page)
                idle = json.loads(await ws.recv())
            async with websockets.connect(f"ws://{host}/ws/v1/live", additional_headers=env.auth("operator")) as ws:
                await ws.send(json.dumps({"type": "start", "to": ["box:a1"], "max_s": 1}))
                json.loads(await ws.recv())
                env.app.state.live_idle_s = 10.0
                with contextlib.suppress(websockets.ConnectionClosed):  # the server hangs up at max_s
                    await speak(ws, frames(click_train([0.1], 1.6)))  # longer than max_s
                capped = json.loads(await ws.recv())
            ends = await asyncio.to_thread(audio.wait_for, lambda ms: [m for m in ms if m.payload[3] & 1], 10)
        finally:
            audio.stop()
    assert started["type"] == "started"
    assert idle["type"] == "ended" and idle["end"] == "idle"
    assert capped["type"] == "ended" and capped["end"] == "max_duration" and capped["seconds"] <= 1.1
    assert len(ends) >= 3  # the END packet (three copies) went to the boxes
