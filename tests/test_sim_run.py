"""The simulator end to end: every bundled scenario passes its own expectations at CI speed, a seed replays
the same timeline, a link outage drains with no loss, a power cut loses nothing, and the agent works
against amqtt (MQTT 3.1.1). Each run is the real thing: a broker, the netem proxy, the agent as a child
process, the gateway and camera twins, the county view.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sim.scenario import bundled, load_scenario, parse_scenario
from sim.village import RunOptions, RunResult, SimError, run_village

pytestmark = pytest.mark.timeout(240)

SCENARIOS = {p.stem: p for p in bundled()}
_RUNS: dict[tuple[str, int], RunResult] = {}  # (scenario, attempt): runs shared by the tests below


async def run(name: str, attempt: int = 1) -> RunResult:
    if (name, attempt) not in _RUNS:
        sc = load_scenario(SCENARIOS[name])
        _RUNS[name, attempt] = await run_village(sc, RunOptions(speed=sc.scenario.ci_speed, live=False))
    return _RUNS[name, attempt]


def failures(result: RunResult) -> list[str]:
    return [f"{o.expect.describe()}: {o.got}" for o in result.outcomes if not o.ok]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_bundled_scenario_passes_its_checks(name: str) -> None:
    result = await run(name)
    assert not failures(result), "\n".join(result.summary)
    assert result.agent_exit_codes[-1] == 0  # the agent stopped cleanly on SIGTERM at the end
    rows = [json.loads(line) for line in result.timeline.read_text().splitlines()]
    assert {r["src"] for r in rows} >= {"scenario", "county"}


async def test_menglou_shows_the_whole_story() -> None:
    result = await run("menglou")
    kinds = {(s.cls, s.kind) for s in result.seen if not s.duplicate}
    assert {("alarm", "sos"), ("alarm", "geofence_exit"), ("event", "camera"), ("receipt", "cmd")} <= kinds
    assert [st for _, st in result.relay_clicks][:1] == ["on"] and result.relay_clicks[-1][1] == "off"


async def test_link_outage_backlog_drains_with_no_loss_checked_by_id() -> None:
    result = await run("link-outage")
    assert result.loss is not None and result.loss.ok, result.loss
    box = load_scenario(SCENARIOS["link-outage"]).box.id
    got = {s.envelope["id"] for s in result.seen if s.box == box and s.cls != "state"}
    assert result.loss.last_seq is not None
    assert got >= {f"{box}:{q}" for q in range(1, result.loss.last_seq + 1)}
    assert any(line.startswith("Backlog: at most") and "at most 0 " not in line for line in result.summary)  # queued


async def test_the_same_seed_gives_the_same_timeline() -> None:
    first = await run("link-outage", 1)
    second = await run("link-outage", 2)
    assert first.canonical["actions"] and first.canonical["county"]
    assert first.canonical == second.canonical


async def test_power_cut_kills_and_restarts_the_agent_without_loss() -> None:
    result = await run("power-cut")
    assert result.agent_exit_codes[0] == -9  # the power cut was a real SIGKILL
    assert len(result.agent_exit_codes) == 2
    assert result.loss is not None and result.loss.ok


async def test_a_reset_outage_does_not_downgrade_the_link_to_311() -> None:
    result = await run("power-cut")  # its outage resets connections (how = "reset") against mosquitto
    assert result.mqtt_version == "5"


TINY: dict[str, Any] = {
    "scenario": {"name": "tiny", "duration_s": 60, "speed": 10, "seed": 3, "drain_s": 20},
    "box": {"id": "sim-tiny-001", "heartbeat_s": 20},
    "wearer": [{"id": "W1", "device": "8800000021", "path": [[21.95, 101.25]]}],
    "at": [{"t_s": 15, "do": "sos", "wearer": "W1"}],
    "expect": [{"kind": "sos", "wearer": "W1", "count": 1}, {"kind": "no_loss"},
               {"kind": "link_fallback_311"}],
}


async def test_the_agent_works_against_amqtt_over_mqtt_311() -> None:
    sc = parse_scenario(TINY)
    result = await run_village(sc, RunOptions(live=False, broker_kind="amqtt"))  # protocol = "3.1.1"
    assert not failures(result), "\n".join(result.summary)
    assert result.mqtt_version == "3.1.1"


async def test_the_link_falls_back_to_311_by_itself_against_amqtt() -> None:
    # amqtt 0.12 never answers an MQTT 5 CONNECT that has a will: the link must try 3.1.1 on its own
    sc = parse_scenario(TINY)
    result = await run_village(sc, RunOptions(live=False, broker_kind="amqtt", mqtt_protocol="auto",
                                              connect_timeout_s=15))
    assert not failures(result), "\n".join(result.summary)
    assert result.mqtt_version == "3.1.1"


def sim_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "sim", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_check_exits_1_and_names_the_failed_expectation(tmp_path: Path) -> None:
    from sim.agentproc import toml_dumps

    doc = json.loads(json.dumps(TINY))
    doc["expect"] = [{"kind": "sos", "wearer": "W1", "count": 2, "note": "impossible: one press"}]
    doc["scenario"]["duration_s"] = 30
    path = tmp_path / "tiny.toml"
    path.write_text(toml_dumps({k: v for k, v in doc.items()}))
    out = sim_cli("run", "--scenario", str(path), "--check", "--no-live", "--speed", "10",
                  "--timeline", str(tmp_path / "t.jsonl"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL expected: SOS, W1, exactly 2" in out.stdout
    assert (tmp_path / "t.jsonl").read_text().strip()


def test_cli_bad_scenario_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[scenario]\nname = "x"\nsped = 3\n')
    out = sim_cli("run", "--scenario", str(path), "--no-live")
    assert out.returncode == 2
    assert out.stderr.strip() == f"village sim: {path}: scenario.sped: unknown key " \
        "(known here: ci_speed, description, drain_s, duration_s, name, seed, speed, tick_s)"


async def test_external_box_rehearsal_drives_a_box_the_simulator_did_not_start(tmp_path: Path) -> None:
    """--external-box: the twins face a box started by someone else (here: the real agent, started by hand
    on the twin's pty path, as a technician points a real box at the bridged port)."""
    import asyncio

    from tests.agentproc import AgentProcess
    from tests.support import Mosquitto, agent_config_dict

    broker = Mosquitto(tmp_path / "b")
    (tmp_path / "b").mkdir()
    broker.start()
    work = tmp_path / "sim"
    doc = json.loads(json.dumps(TINY))
    doc["scenario"]["duration_s"] = 40
    doc["expect"] = [{"kind": "sos", "wearer": "W1", "count": 1}]
    sc = parse_scenario(doc)
    cfg = agent_config_dict(tmp_path / "state", broker.url, box=sc.box.id,
                            gateway=[{"id": "gw1", "url": str(work / "ttyGW0"), "codec": "watch"}],
                            wearer=[{"id": "W1", "device": "8800000021"}])
    (tmp_path / "box").mkdir()
    box = AgentProcess(tmp_path / "box", cfg)
    try:
        async with asyncio.TaskGroup() as tg:
            sim = tg.create_task(run_village(sc, RunOptions(live=False, external=True, broker_url=broker.url,
                                                            workdir=work, connect_timeout_s=30)))
            while not (work / "ttyGW0").exists():
                await asyncio.sleep(0.05)
            await asyncio.to_thread(box.start)
        result = sim.result()
    finally:
        box.close()
        broker.stop()
    assert not failures(result), "\n".join(result.summary)
    assert result.loss is None and result.agent_exit_codes == []  # nothing local to measure: said so


async def test_external_box_refuses_what_needs_the_local_agent() -> None:
    doc = json.loads(json.dumps(TINY))
    doc["at"].append({"t_s": 20, "do": "power_cut", "for_s": 5})
    with pytest.raises(SimError, match="power_cut"):
        await run_village(parse_scenario(doc), RunOptions(live=False, external=True, broker_url="mqtt://127.0.0.1:1"))
