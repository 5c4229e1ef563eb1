"""[[gateway]] / [[wearer]] validation: what `village agent check` rejects, `agent run` never crashes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, parse_config
from agent.context import Hardware
from agent.wearables.settings import SERIAL_SCHEMES
from tests.agentproc import run_cli
from tests.support import agent_config_dict, toml_dumps


def gateway_doc(tmp_path: Path, **gateway: Any) -> dict[str, Any]:
    return agent_config_dict(tmp_path / "state", "mqtt://127.0.0.1:1883",
                             gateway=[{"id": "gw1", "url": "/dev/ttyUSB0", "codec": "watch", **gateway}])


@pytest.mark.parametrize(("gateway", "ok"), [
    ({"url": "/dev/ttyUSB0"}, True),
    ({"url": "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"}, True),
    ({"url": "socket://192.168.1.20:9000"}, True),
    ({"url": "rfc2217://10.0.0.5:7000"}, True),
    ({"url": "loop://"}, True),
    ({"url": "spy:///dev/ttyUSB0"}, True),
    ({"url": "ble", "codec": "ingics"}, True),
    ({"url": "ble:hci1", "codec": "ingics"}, True),
    ({"url": ""}, False),
    ({"url": "   "}, False),
    ({"url": "ttyUSB0"}, False),
    ({"url": "http://gateway.local"}, False),
    ({"url": "/dev/ttyUSB0\n"}, False),
    ({"url": "ble:wlan0", "codec": "ingics"}, False),
])
def test_gateway_url(tmp_path: Path, gateway: dict[str, Any], ok: bool) -> None:
    doc = gateway_doc(tmp_path, **gateway)
    if ok:
        assert parse_config(doc).gateways[0].url == gateway["url"]
    else:
        with pytest.raises(ConfigError, match=r"gateway\[0\]\.url: "):
            parse_config(doc)


@pytest.mark.parametrize("codec", ["watch", "nmea"])
def test_a_ble_gateway_needs_the_ingics_codec(tmp_path: Path, codec: str) -> None:
    with pytest.raises(ConfigError, match=r"gateway\[0\]\.codec: .*must be \"ingics\""):
        parse_config(gateway_doc(tmp_path, url="ble", codec=codec))


@pytest.mark.parametrize("bad", ["", "gw 1 / x", "gw/1", "x" * 65, "网关", "gw1\n"])
def test_gateway_and_wearer_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"gateway\[0\]\.id: must be 1-64 characters"):
        parse_config(gateway_doc(tmp_path, id=bad))
    doc = gateway_doc(tmp_path, id="gw-1.north_2")
    doc["wearer"] = [{"id": "W1", "device": "8800000001"}, {"id": bad, "device": "8800000002"}]
    with pytest.raises(ConfigError, match=r"wearer\[1\]\.id: must be 1-64 characters"):
        parse_config(doc)


def test_every_scheme_allowed_is_one_pyserial_knows() -> None:
    import importlib.util

    for scheme in SERIAL_SCHEMES:  # found, not imported: protocol_cp2110 needs hidapi, absent here
        assert importlib.util.find_spec(f"serial.urlhandler.protocol_{scheme}") is not None, scheme


def test_hardware_has_a_decoder_factory_slot() -> None:
    assert Hardware().decoder_factory is None


@pytest.mark.parametrize("verb", ["check", "run"])
def test_an_empty_gateway_url_is_a_config_error_not_a_crash(tmp_path: Path, verb: str) -> None:
    path = tmp_path / "box.toml"
    path.write_text(toml_dumps(gateway_doc(tmp_path, url="")))
    result = run_cli("agent", verb, "-c", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway[0].url" in lines[0] and "Traceback" not in result.stderr
