"""Scenario files: the bundled ones parse; bad ones fail before anything starts, naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.agentproc import agent_config, toml_dumps
from sim.scenario import ScenarioError, bundled, load_scenario, parse_scenario

MINIMAL: dict[str, Any] = {
    "scenario": {"name": "t", "duration_s": 100},
    "fence": [{"id": "f", "center": [21.95, 101.25], "radius_m": 300}],
    "wearer": [{"id": "W1", "device": "8800000001", "path": [[21.95, 101.25]], "fences": ["f"]}],
    "camera": [{"id": "cam1"}],
    "at": [{"t_s": 10, "do": "sos", "wearer": "W1"}],
    "expect": [{"kind": "sos", "wearer": "W1", "count": 1}],
}


def with_(path: str, value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(MINIMAL))
    *head, last = path.split(".")
    node: Any = doc
    for k in head:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(last) if last.isdigit() else last] = value
    return doc


def test_every_bundled_scenario_parses_and_names_itself() -> None:
    names = {p.stem: load_scenario(p) for p in bundled()}
    assert {"menglou", "link-outage", "power-cut"} <= set(names)
    for stem, sc in names.items():
        assert sc.scenario.name == stem
        assert sc.expects, f"{stem} states no expectations: --check would prove nothing"


def test_minimal_scenario_and_its_geojson() -> None:
    sc = parse_scenario(MINIMAL)
    (feature,) = sc.geojson()["features"]
    assert feature["geometry"] == {"type": "Point", "coordinates": [101.25, 21.95]}
    assert feature["properties"]["radius_m"] == 300


@pytest.mark.parametrize(("path", "value", "key", "words"), [
    ("scenario.durration_s", 5, "scenario.durration_s", "unknown key"),
    ("at.0.do", "explode", "at[0].do", "unknown action"),
    ("at.0.wearer", "W9", "at[0].wearer", "no such wearer"),
    ("at.0.t_s", 500, "at[0].t_s", "after the end"),
    ("wearer.0.fences", ["nope"], "wearer[0].fences", "no such fence"),
    ("wearer.0.path", [[91, 0]], "wearer[0].path", "is not [lat, lon]"),
    ("camera.0.mode", "on fire", "camera[0].mode", "must be one of"),
    ("expect.0.count", "one", "expect[0].count", "integer"),
    ("fence.0.radius_m", -1, "fence[0].radius_m", "must be > 0"),
])
def test_bad_scenarios_name_the_key(path: str, value: Any, key: str, words: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(with_(path, value), "bad.toml")
    assert err.value.key == key and words in err.value.problem
    assert str(err.value).startswith("bad.toml: ")


def test_an_action_missing_what_it_needs() -> None:
    with pytest.raises(ScenarioError, match=r"at\[0\].for_s: missing"):
        parse_scenario(with_("at.0", {"t_s": 1, "do": "link_down"}))


def test_actions_out_of_order_and_cancel_before_push_are_refused() -> None:
    doc = with_("at", [{"t_s": 20, "do": "sos", "wearer": "W1"}, {"t_s": 10, "do": "sos", "wearer": "W1"}])
    with pytest.raises(ScenarioError, match="time order"):
        parse_scenario(doc)
    with pytest.raises(ScenarioError, match="no earlier broadcast"):
        parse_scenario(with_("at", [{"t_s": 5, "do": "cancel", "id": "b1"}]))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[scenario\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(tmp_path / "bad.toml")


def test_generated_agent_config_scales_timers_and_is_valid(tmp_path: Path) -> None:
    import tomllib

    from agent.config import parse_config

    sc = load_scenario(next(p for p in bundled() if p.stem == "menglou"))
    pub = tmp_path / "k.pub"
    pub.write_text("x")
    doc = agent_config(sc, speed=10, state_dir=tmp_path / "state", broker_url="mqtt://127.0.0.1:1",
                       gateway_url="/dev/null", fences_file=None, trust={"k": str(pub)}, cameras=[])
    config = parse_config(tomllib.loads(toml_dumps(doc)))  # the agent's own validator accepts it
    assert config.box.heartbeat_s == sc.box.heartbeat_s / 10
    assert config.wearables.exit_s == sc.box.exit_s / 10
    assert config.wearables.report_interval_s == sc.scenario.tick_s / 10
    assert config.box.profile == "sim" and [w.id for w in config.wearers] == ["W1", "W2", "W3", "W4"]
