"""Releases and rollouts on the county server: upload (resumable, hash-checked), Range downloads, a pilot
wave first, waves after, a halt by itself past the failure share, `village county rollout status`.

The real app over SQLite and PostgreSQL (the `db_url` fixture), the real publisher on a real mosquitto;
the boxes' receipts are stored the way the ingest stores them (a `messages` row with the envelope and the
`receipts` row naming it), which tests/test_county_ingest*.py prove for the ingest itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.protocol import jws
from agent.release import Manifest, WheelEntry, sign_manifest
from county.server import routes_releases
from county.store.tables import messages, receipts, rollouts
from tests.county_api import NOW_MS, PASSWORD, Env, box_side, env_fixture, wait_messages  # noqa: F401
from tests.support import free_port

WHEELS = {"village_edge-2.0.0-py3-none-any.whl": b"project wheel " * 500,
          "dep_lib-1.0-py3-none-any.whl": b"a dependency " * 300}


def bundle() -> tuple[str, dict[str, bytes]]:
    entries = tuple(WheelEntry(f, hashlib.sha256(d).hexdigest(), len(d), f.startswith("village_edge"))
                    for f, d in WHEELS.items())
    m = Manifest("village-edge", "2.0.0", "cp311", "any", "1.0.0", 1, True, entries)
    return sign_manifest(m, Ed25519PrivateKey.generate(), "release-test"), WHEELS


async def upload(env: Env) -> str:
    token, wheels = bundle()
    r = await env.post("admin", "/api/v1/releases", {"manifest": token})
    assert r.status_code == 201, r.text
    assert sorted(r.json()["missing"]) == sorted(wheels) and not r.json()["complete"]
    for file, data in wheels.items():
        r = await env.client.put(f"/api/v1/releases/2.0.0/wheels/{file}", content=data, headers=env.auth("admin"))
        assert r.status_code == 200, r.text
    assert r.json()["complete"] and r.json()["missing"] == []
    return token


async def box_receipt(env: Env, cmd: str, box: str, seq: int, state: str, reason: str | None = None,
                      **data: Any) -> None:
    """A receipt as the ingest stores it: the envelope in `messages`, the latest state in `receipts`."""
    envelope = {"v": 1, "box": box, "seq": seq, "ts": NOW_MS + seq, "class": "receipt", "kind": "cmd",
                "data": {"cmd": cmd, "state": state, **({"reason": reason} if reason else {}), **data}}
    eid = f"{box}:{seq}"
    await env.insert(messages, {"id": eid, "box": box, "seq": seq, "ts": NOW_MS + seq, "class": "receipt",
                                "kind": "cmd", "received": NOW_MS + seq, "raw": json.dumps(envelope)})
    async with env.db.begin() as conn:
        await conn.execute(receipts.delete().where(receipts.c.cmd == cmd, receipts.c.box == box))
        await conn.execute(receipts.insert().values(cmd=cmd, box=box, state=state, reason=reason, ts=NOW_MS + seq,
                                                    envelope=eid))


async def test_upload_is_checked_and_resumable_and_the_files_are_served_with_range(env: Env) -> None:
    token, wheels = bundle()
    assert (await env.post("operator", "/api/v1/releases", {"manifest": token})).status_code == 403
    bad = await env.post("admin", "/api/v1/releases", {"manifest": "not.a.token"})
    assert bad.status_code == 422
    r = await env.post("admin", "/api/v1/releases", {"manifest": token})
    assert r.status_code == 201
    file = "village_edge-2.0.0-py3-none-any.whl"
    wrong = await env.client.put(f"/api/v1/releases/2.0.0/wheels/{file}", content=b"x" * len(wheels[file]),
                                 headers=env.auth("admin"))
    assert wrong.status_code == 422 and wrong.json()["reason"] == "hash_mismatch"
    box = httpx.AsyncClient(transport=httpx.ASGITransport(app=routes_releases.box_app(env.app)),
                            base_url="http://box")  # the boxes' listener ([server] box_listen)
    assert (await box.get(f"/releases/2.0.0/wheels/{file}")).status_code == 404  # not uploaded yet
    await env.client.put(f"/api/v1/releases/2.0.0/wheels/{file}", content=wheels[file], headers=env.auth("admin"))
    again = await env.post("admin", "/api/v1/releases", {"manifest": token})  # resuming: only what is missing
    assert again.status_code == 200 and again.json()["missing"] == ["dep_lib-1.0-py3-none-any.whl"]
    _other, _ = bundle()  # same version, another manifest
    assert (await env.post("admin", "/api/v1/releases", {"manifest": _other})).status_code == 409
    whole = await box.get(f"/releases/2.0.0/wheels/{file}")
    assert whole.content == wheels[file]
    assert (await env.client.get(f"/releases/2.0.0/wheels/{file}")).status_code == 404  # not on the browsers' app
    part = await box.get(f"/releases/2.0.0/wheels/{file}", headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == wheels[file][1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(wheels[file]) - 1}/{len(wheels[file])}"
    m = await box.get("/releases/2.0.0/manifest.jws")
    await box.aclose()
    assert m.text == token and hashlib.sha256(m.content).hexdigest() == r.json()["manifest_sha256"]
    assert [a["action"] for a in await env.audit_rows("release.upload")] == ["release.upload"]


async def test_pilot_first_then_waves_and_a_halt_by_itself_past_the_failure_share(env: Env) -> None:
    token = await upload(env)
    boxes = box_side(env.broker)
    try:
        refused = await env.post("admin", "/api/v1/rollouts", {"version": "2.0.0", "to": ["group:town-a"],
                                                                "base_url": "http://plain"})
        assert refused.status_code == 400
        r = await env.post("admin", "/api/v1/rollouts", {
            "version": "2.0.0", "to": ["group:town-a", "box:b1"], "pilot": ["a2"], "wave_size": 1,
            "max_failure_pct": 40, "base_url": "https://county.example:8443"})
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["state"] == "pilot" and doc["pilot"] == ["a2"]
        assert [(b["box"], b["state"]) for b in doc["boxes"]] == [("a2", "pending"), ("a1", "not_sent"),
                                                                 ("b1", "not_sent")]
        [msg] = await wait_messages(boxes, 1)
        assert msg.topic == "vc/v1/box/a2/cmd" and not msg.retain
        _h, payload = jws.verify(msg.payload, {"county-test": env.public_key})
        assert payload["kind"] == "agent.update" and payload["to"] == ["box:a2"]
        assert payload["data"] == {"version": "2.0.0", "manifest_sha256": hashlib.sha256(token.encode()).hexdigest(),
                                   "url": "https://county.example:8443/releases/2.0.0/manifest.jws"}
        pilot_cmd = payload["id"]

        await box_receipt(env, pilot_cmd, "a2", 1, "started", step="installed", version="1.4.0")
        doc = (await env.get("admin", f"/api/v1/rollouts/{doc['id']}")).json()
        assert doc["boxes"][0]["state"] == "installed" and doc["state"] == "pilot"  # no wave before the pilot is done
        await box_receipt(env, pilot_cmd, "a2", 2, "finished", step="healthy", version="2.0.0")
        doc = (await env.get("admin", f"/api/v1/rollouts/{doc['id']}")).json()
        assert doc["state"] == "running" and doc["boxes"][0]["state"] == "healthy"
        msgs = await wait_messages(boxes, 2)
        assert msgs[1].topic == "vc/v1/box/a1/cmd"
        wave1 = jws.verify(msgs[1].payload, {"county-test": env.public_key})[1]["id"]

        await box_receipt(env, wave1, "a1", 3, "failed", "rolled_back", detail="no broker connection within 300 s",
                          version="1.4.0", step="rolled_back")
        doc = (await env.get("admin", f"/api/v1/rollouts/{doc['id']}")).json()
        assert doc["state"] == "halted" and "1 of 2 boxes failed" in doc["reason"], doc
        row = next(b for b in doc["boxes"] if b["box"] == "a1")
        assert (row["state"], row["detail"]) == ("rolled_back", "no broker connection within 300 s")
        assert doc["counts"]["not_sent"] == 1  # b1 never got it
        await asyncio.sleep(0)  # nothing more is sent after a halt
        assert len(boxes.snapshot()) == 2
    finally:
        boxes.stop()


async def test_the_server_loop_moves_a_rollout_on_and_silent_boxes_time_out(env: Env) -> None:
    await upload(env)
    boxes = box_side(env.broker)
    stop = asyncio.Event()
    loop = asyncio.create_task(routes_releases.run(env.app, stop, tick_s=0.05))
    try:
        r = await env.post("admin", "/api/v1/rollouts", {"version": "2.0.0", "to": ["box:a1", "box:a2", "box:b1"],
                                                          "pilot": 1, "wave_size": 2, "max_failure_pct": 50,
                                                          "wave_timeout_s": 60, "base_url": "https://c.example"})
        rid = r.json()["id"]
        [msg] = await wait_messages(boxes, 1)
        cmd = jws.verify(msg.payload, {"county-test": env.public_key})[1]["id"]
        await box_receipt(env, cmd, "a1", 1, "finished", step="healthy", version="2.0.0")
        msgs = await wait_messages(boxes, 3)  # the loop sent the next wave (two boxes) without any read
        assert sorted(m.topic for m in msgs[1:]) == ["vc/v1/box/a2/cmd", "vc/v1/box/b1/cmd"]
        env.app.state.clock = lambda: NOW_MS + 61_000  # both silent past wave_timeout_s

        async def halted() -> dict[str, Any]:
            while True:
                [row] = await env.rows(rollouts, rollouts.c.id == rid)
                if row["state"] != "running":
                    return row
                await asyncio.sleep(0.05)

        row = await asyncio.wait_for(halted(), 10)
        assert row["state"] == "halted" and "2 timed_out" in row["reason"]
    finally:
        stop.set()
        await loop
        boxes.stop()


@contextlib.asynccontextmanager
async def served(env: Env) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with asyncio.timeout(10):
            while not server.started:  # uvicorn has no started event to wait on
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_village_county_rollout_status_prints_one_row_per_box(env: Env) -> None:
    await upload(env)
    r = await env.post("admin", "/api/v1/rollouts", {"version": "2.0.0", "to": ["group:town-a"], "pilot": 1,
                                                      "base_url": "https://c.example"})
    rid = r.json()["id"]
    async with served(env) as base:
        cli = [sys.executable, "-m", "agent.cli", "county", "rollout", "status", rid, "--server", base,
               "--user", "admin"]
        environ = {**os.environ, "VILLAGE_COUNTY_PASSWORD": PASSWORD, "VILLAGE_LANG": "en"}
        out = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, env=environ, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"{rid}  2.0.0  pilot") and "pending 1" in lines[0] and "not_sent 1" in lines[0]
        assert any("a1" in line and "pending" in line for line in lines[1:])
        js = await asyncio.to_thread(subprocess.run, [*cli, "--json"], capture_output=True, text=True, env=environ,
                                     timeout=60)
        assert json.loads(js.stdout)["id"] == rid


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_box_downloads_from_the_county_server_over_mutual_tls_and_resumes_with_range(
        env: Env, tmp_path: Path) -> None:
    import ssl
    import threading

    from agent.update.fetch import FetchError, RateLimit, Stats, fetch_file, tls_context
    from tests.pki import TestCA

    await upload(env)
    ca = TestCA(tmp_path / "ca")
    issued = ca.server("localhost")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(routes_releases.box_app(env.app), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off", ssl_certfile=str(issued.cert),
                                           ssl_keyfile=str(issued.key),
                                           ssl_ca_certs=str(ca.pem), ssl_cert_reqs=ssl.CERT_REQUIRED))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        file = "village_edge-2.0.0-py3-none-any.whl"
        data = WHEELS[file]
        url = f"https://localhost:{port}/releases/2.0.0/wheels/{file}"
        dest = tmp_path / "w.whl"
        (tmp_path / "w.whl.part").write_bytes(data[:2500])  # what a killed download left
        ident = ca.client("a1")
        stats = Stats()
        await asyncio.to_thread(fetch_file, url, dest, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                ctx=tls_context(ca.pem, ident.cert, ident.key), rate=RateLimit(1 << 20),
                                stop=threading.Event(), stats=stats)
        assert dest.read_bytes() == data and stats.bytes == len(data) - 2500  # only the rest came over the wire
        with pytest.raises(FetchError):  # no client certificate: the TLS listener refuses
            await asyncio.to_thread(fetch_file, url, tmp_path / "x.whl", size=len(data),
                                    sha256=hashlib.sha256(data).hexdigest(), ctx=tls_context(ca.pem, None, None),
                                    rate=RateLimit(1 << 20), stop=threading.Event(), stats=Stats())
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_concurrent_advances_send_a_wave_once(env: Env) -> None:
    from county import rollout as ro

    await upload(env)
    boxes = box_side(env.broker)
    try:
        r = await env.post("admin", "/api/v1/rollouts", {"version": "2.0.0", "to": ["box:a1", "box:a2", "box:b1"],
                                                          "pilot": 1, "wave_size": 2, "base_url": "https://c.example"})
        rid = r.json()["id"]
        [msg] = await wait_messages(boxes, 1)
        await box_receipt(env, jws.verify(msg.payload, {"county-test": env.public_key})[1]["id"], "a1", 1,
                          "finished", step="healthy")
        sent: list[str] = []

        async def publish(boxes_: list[str], targets: list[str], cmd: str) -> str | None:
            sent.append(cmd)
            await asyncio.sleep(0.01)  # let the other advance run into the claim meanwhile
            return None

        docs = await asyncio.gather(*(ro.advance(env.db, rid, publish, NOW_MS) for _ in range(4)))
        assert len(sent) == 1  # one claim won; the others saw it and sent nothing
        assert all(d is not None and d["waves"] == 2 for d in docs)
        [row] = await env.rows(rollouts, rollouts.c.id == rid)
        assert row["waves"][-1]["cmd"] == sent[0]
    finally:
        boxes.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_rollout_start_without_base_url_points_the_boxes_at_the_servers_box_listener(
        env: Env, tmp_path: Path) -> None:
    """`--base-url` left out: the server's default (its box listener, where boxes present their certificate),
    not the browser address the CLI talks to."""
    import dataclasses

    from tests.pki import TestCA

    ca = TestCA(tmp_path / "pki")
    tls = ca.server()
    cfg = env.app.state.config
    env.app.state.config = dataclasses.replace(cfg, server=dataclasses.replace(
        cfg.server, tls_cert=tls.cert, tls_key=tls.key, box_listen="127.0.0.1:8443", box_client_ca=ca.pem))
    await upload(env)
    async with served(env) as base:
        cli = [sys.executable, "-m", "agent.cli", "county", "rollout", "start", "2.0.0", "--to", "group:town-a",
               "--server", base, "--user", "admin", "--json"]
        environ = {**os.environ, "VILLAGE_COUNTY_PASSWORD": PASSWORD, "VILLAGE_LANG": "en"}
        out = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, env=environ, timeout=60)
    assert out.returncode == 0, out.stderr
    async with env.db.begin() as conn:
        (row,) = (await conn.execute(rollouts.select())).mappings().all()
    assert "https://127.0.0.1:8443/" in json.dumps(dict(row), default=str)
