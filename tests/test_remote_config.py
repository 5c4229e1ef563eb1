"""Remote configuration (`config.set`, `config.set_mqtt`) on real agent processes run by the launcher.

Valid: applied after the agent came back healthy with it. Invalid: rejected with the schema's message,
nothing written. A change that makes the agent fail (a broker list it cannot reach): rolled back by itself.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from agent.update.remote import merge, parse_fragment
from tests.support import Collector
from tests.update_harness import (  # noqa: F401  (the fixtures, by their pytest names)
    BASE_PYTHON,
    PROFILES,
    Box,
    fixture_bundles,
    fixture_ca,
    fixture_county,
    fixture_make_box,
    fixture_server,
    fixture_template,
    running_version,
    wait_receipt,
)

pytestmark = pytest.mark.timeout(240)


def checked(box: Box) -> dict:
    """`village agent check --json` under the box's current release: what the config resolves to now."""
    out = subprocess.run([str(box.root / "current" / "bin" / "python"), "-m", "agent.cli", "agent", "check", "--json",
                          "-c", str(box.config_path)], capture_output=True, text=True, cwd="/",
                         env={"VILLAGE_PROFILE_DIR": str(PROFILES), "PATH": "/usr/bin:/bin"}, check=True)
    return json.loads(out.stdout)["config"]


def test_valid_applies_invalid_is_refused_with_the_schema_message_and_trust_is_never_remote(
        make_box, county: Collector) -> None:
    box = make_box()
    frag = "[broadcast]\ndefault_volume = 55\nquiet_hours = ['22:00', '06:30']\n"
    cmd = box.command(county, "config.set", {"toml": frag})
    wait_receipt(county, box, cmd, state="started", step="restarting")
    applied = wait_receipt(county, box, cmd, 60, state="applied", step="healthy")
    assert applied["version"] == "1.0.0"
    resolved = checked(box)
    assert resolved["broadcast"]["default_volume"] == 55 and resolved["broadcast"]["max_volume"] == 80
    assert box.layout.read_trial() is None

    bad = box.command(county, "config.set", {"toml": "[broadcast]\ndefault_volume = 250\n"})
    r = wait_receipt(county, box, bad, state="rejected")
    assert r["reason"] == "invalid_config" and "broadcast.default_volume" in r["detail"] and "100" in r["detail"], r
    unknown = box.command(county, "config.set", {"toml": "[broadcast]\nloudness = 3\n"})
    r = wait_receipt(county, box, unknown, state="rejected")
    assert r["reason"] == "invalid_config" and "loudness" in r["detail"], r
    trust = box.command(county, "config.set", {"toml": "[trust.keys]\nevil = '/tmp/evil.pub'\n"})
    assert wait_receipt(county, box, trust, state="rejected")["reason"] == "not_allowed"
    mqtt = box.command(county, "config.set_mqtt", {"toml": "[mqtt]\nurl = 'mqtt://127.0.0.1:1'\n"})
    assert wait_receipt(county, box, mqtt, state="rejected")["reason"] == "not_allowed"  # not enabled on this box
    assert checked(box)["broadcast"]["default_volume"] == 55  # nothing refused was written
    assert running_version(county, box) == "1.0.0"


def test_a_broker_list_the_box_cannot_reach_is_rolled_back_by_itself(make_box, county: Collector) -> None:
    box = make_box(allow_remote_mqtt=True, health_timeout_s=6.0)
    before = json.loads(box.layout.overlay.read_text()) if box.layout.overlay.exists() else {}
    cmd = box.command(county, "config.set_mqtt", {"toml": "[mqtt]\nurl = ['mqtt://127.0.0.1:9']\n"})
    wait_receipt(county, box, cmd, state="started", step="restarting")
    r = wait_receipt(county, box, cmd, 90, state="failed", reason="rolled_back")
    assert "broker" in r["detail"], r
    assert json.loads(box.layout.overlay.read_text()) == before
    assert box.layout.read_trial() is None
    assert running_version(county, box) == "1.0.0"


def test_fragments_merge_table_keys_and_replace_arrays_of_tables() -> None:
    base = {"broadcast": {"default_volume": 70, "timezone": "Asia/Shanghai"}, "wearer": [{"id": "a"}]}
    frag = parse_fragment("[broadcast]\ndefault_volume = 40\n[[wearer]]\nid = 'b'\ndevice = 'x'\n", "config.set",
                          allow_mqtt=False)
    assert merge(base, frag) == {"broadcast": {"default_volume": 40, "timezone": "Asia/Shanghai"},
                                 "wearer": [{"id": "b", "device": "x"}]}
    for text, reason in (("[update]\nroot = '/'\n", "not_allowed"), ("[box]\nid = 'x'\n", "not_allowed"),
                         ("[mqtt]\nurl = 'mqtt://x'\n", "not_allowed"), ("not toml [", "invalid_config"),
                         ("", "malformed")):
        with pytest.raises(Exception) as exc:
            parse_fragment(text, "config.set", allow_mqtt=True)
        assert getattr(exc.value, "reason", None) == reason, text
    assert BASE_PYTHON.exists()
