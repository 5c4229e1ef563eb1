"""sim/county_server.py (`village sim run --county`): the real `village county serve` as a child process on a
real mosquitto, with the files generated from a scenario; the printed login works, an envelope a box sends
is stored and listed under the scenario's village, and the reports answer."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent.keys import new_keypair
from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.topics import Topics
from county.regions import load_regions
from sim.county_server import USER, CountyServer, county_installed, regions_toml
from tests.support import Collector, Mosquitto, wait_until


def _http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_regions_from_a_scenario_are_a_valid_regions_file(tmp_path: Path) -> None:
    p = tmp_path / "regions.toml"
    p.write_text(regions_toml("menglou", "勐楼村: the whole demo", "lhk-menglou-001", ("town-menglou",)))
    regions = load_regions(p)
    place = regions.place("lhk-menglou-001")
    assert (place.village, place.village_name, place.township) == ("menglou", "勐楼村", "town-menglou")
    p.write_text(regions_toml("勐楼", "", "b1", ()))  # nothing usable as an id: the fallbacks
    assert load_regions(p).place("b1").village == "sim-village"


def test_the_sim_starts_a_county_server_that_stores_what_the_box_sends(tmp_path: Path, broker: Mosquitto) -> None:
    assert county_installed()
    key, _pub = new_keypair("county-sim", tmp_path / "keys")
    server = CountyServer(tmp_path, broker.url, key, "county-sim", "menglou", "勐楼村: demo", "lhk-menglou-001",
                          ("town-menglou",)).start()
    try:
        assert server.url in server.banner() and server.password in server.banner()
        status, body = _http("POST", f"{server.url}/api/v1/session", {"username": USER, "password": server.password})
        assert status == 200, body
        token = body["token"]
        assert _http("POST", f"{server.url}/api/v1/session", {"username": USER, "password": "wrong"})[0] == 401
        env = Envelope("lhk-menglou-001", 1, int(time.time() * 1000), MsgClass.TELEMETRY, "heartbeat",
                       {"version": "1.4.0", "outbox": {"depth": {"telemetry": 0}}})
        pub = Collector(broker.url, topics=("none/#",)).start()
        try:
            pub.publish(Topics().up(env.box, env.cls, env.kind), env.encode())

            def listed() -> Any:
                boxes = {b["id"]: b for b in _http("GET", f"{server.url}/api/v1/boxes", token=token)[1]}
                b = boxes.get("lhk-menglou-001")
                return b if b is not None and b["last_seen"] is not None else None

            box = wait_until(listed, timeout=30)
        finally:
            pub.stop()
        assert (box["village"], box["village_name"], box["version"]) == ("menglou", "勐楼村", "1.4.0")
        status, rep = _http("GET", f"{server.url}/api/v1/reports/boxes", token=token)
        assert status == 200 and {r["id"] for r in rep["rows"]} == {"sim-county", "town-menglou", "menglou"}
        assert {r["id"]: r for r in rep["rows"]}["menglou"]["slots_online"] == 1
    finally:
        server.stop()
    assert server.proc is None and (tmp_path / "county" / "county.db").exists()


def test_village_sim_run_shows_the_whole_chain_into_the_county_server(tmp_path: Path) -> None:
    """`village sim run` (the CLI, default --county): the box's SOS reaches the county server's database."""
    import asyncio
    import subprocess
    import sys

    from sqlalchemy import func, select

    from county.store import Database
    from county.store.tables import alarms, messages
    from sim.agentproc import toml_dumps

    scenario = {"scenario": {"name": "tiny", "description": "小村: a test", "duration_s": 30, "speed": 10,
                             "seed": 3, "drain_s": 20},
                "box": {"id": "sim-tiny-001", "heartbeat_s": 10},
                "wearer": [{"id": "W1", "device": "8800000021", "path": [[21.95, 101.25]]}],
                "at": [{"t_s": 5, "do": "sos", "wearer": "W1"}],
                "expect": [{"kind": "sos", "wearer": "W1", "count": 1}]}
    path = tmp_path / "tiny.toml"
    path.write_text(toml_dumps(scenario))
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "agent.cli", "sim", "run", "--scenario", str(path), "--check",
                          "--no-live", "--broker-kind", "mosquitto", "--workdir", str(run)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "county server: http://127.0.0.1:" in out.stdout and f"login {USER} / " in out.stdout

    async def stored() -> tuple[int, list[Any]]:
        db = await Database.open(f"sqlite:///{run / 'county' / 'county.db'}")
        try:
            async with db.connect() as conn:
                n = (await conn.execute(select(func.count()).select_from(messages)
                                        .where(messages.c.box == "sim-tiny-001"))).scalar_one()
                sos = (await conn.execute(select(alarms.c.kind, alarms.c.box))).all()
            return n, [tuple(r) for r in sos]
        finally:
            await db.close()

    n, sos = asyncio.run(stored())
    assert sos == [("sos", "sim-tiny-001")] and n > 1
