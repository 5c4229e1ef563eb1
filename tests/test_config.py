"""Config loading: frozen objects, unknown keys, clear errors, masked secrets, the generated reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, masked, parse_config, redact_url
from agent.configdoc import render
from tests.support import agent_config_dict, toml_dumps

REPO = Path(__file__).resolve().parent.parent


def test_minimal_config_gets_defaults_and_is_frozen(tmp_path: Path) -> None:
    cfg = parse_config(agent_config_dict(tmp_path, "mqtt://127.0.0.1:1883"))
    assert cfg.mqtt.url == ("mqtt://127.0.0.1:1883",)
    assert cfg.outbox.max_bytes == 256 * 1024 * 1024 and cfg.box.groups == ("town-test",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.box.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.trust.keys["x"] = Path("/y")  # type: ignore[index]


def test_the_hardware_profile_is_required(tmp_path: Path) -> None:
    """It used to default to "sim": a box whose config forgot it ran on the simulator's twins (MockFactory
    relay, silent loudspeakers) while reporting healthy."""
    doc = agent_config_dict(tmp_path, "mqtt://127.0.0.1:1883")
    del doc["box"]["profile"]
    path = tmp_path / "a.toml"
    path.write_text(toml_dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: box.profile: missing (required)"
    doc["box"]["profile"] = ""
    with pytest.raises(ConfigError, match=r"box\.profile: a hardware profile name"):
        parse_config(doc)


def test_error_names_file_key_and_problem(tmp_path: Path) -> None:
    doc = agent_config_dict(tmp_path, "mqtt://127.0.0.1:1883", gateway=[{"id": "g", "url": "x", "codec": "morse"}])
    path = tmp_path / "a.toml"
    path.write_text(toml_dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: gateway[0].codec: must be one of 'watch' | 'ingics' | 'nmea', got 'morse'"


@pytest.mark.parametrize(("section", "value", "key"), [
    ("mqtt", {"cert": "/etc/hostname"}, "mqtt.cert"),  # cert without key
    ("mqtt", {"backoff_min_s": 10, "backoff_max_s": 1}, "mqtt.backoff_max_s"),
    ("box", {"groups": ["ok", "not ok"]}, "box.groups"),
    ("outbox", {"max_bytes": 0}, "outbox.max_bytes"),
])
def test_cross_field_and_range_checks(tmp_path: Path, section: str, value: dict, key: str) -> None:
    doc = agent_config_dict(tmp_path, "mqtt://127.0.0.1:1883")
    doc.setdefault(section, {}).update(value)
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "f.toml")
    assert err.value.key == key


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    doc = agent_config_dict(tmp_path, "mqtt://127.0.0.1:1883",
                            wearer=[{"id": "W1", "device": "1"}, {"id": "W1", "device": "2"}])
    with pytest.raises(ConfigError, match=r"wearer\[1\]\.id: duplicate id 'W1'"):
        parse_config(doc, "f.toml")


def test_secrets_masked() -> None:
    assert redact_url("mqtts://box:pw@h:8883") == "mqtts://box:***@h:8883"
    assert redact_url("mqtt://h:1883") == "mqtt://h:1883"
    cfg = parse_config(agent_config_dict(Path("/tmp/x"), "mqtt://u:topsecret@h:1"))
    assert "topsecret" not in repr(masked(cfg))


def test_configuration_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: python -m agent.configdoc > docs/configuration.md"


def test_agent_and_console_read_a_broker_url_the_same_way() -> None:
    from agent.link import Broker
    from county.console import BrokerSpec

    url = "mqtts://box%2D1:p%40ss%3Aword@county.example:8883"
    box, console = Broker.parse(url, None, None), BrokerSpec.parse(url)
    assert (box.username, box.password) == (console.username, console.password) == ("box-1", "p@ss:word")
    assert (box.host, box.port, box.tls) == (console.host, console.port, console.tls) == ("county.example", 8883, True)
    assert "p%40ss" not in box.url and "***" in box.url
