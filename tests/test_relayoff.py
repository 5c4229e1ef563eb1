"""`village agent relay-off`: the relay pin driven to its inactive level without the agent (ExecStopPost)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from agent import relayoff
from agent.config import load_config

REPO = Path(__file__).resolve().parent.parent
VILLAGE = REPO / ".venv" / "bin" / "village"


def write_config(tmp_path: Path, profile: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[box]\nid = "b1"\nprofile = "{profile}"\nstate_dir = "{tmp_path / "state"}"\n\n'
                   '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    return cfg


def pi_profile(tmp_path: Path) -> Path:
    """A copy of a shipped pi profile (relay BCM 26, active low) and its parent."""
    for name in ("pi4-relayhat.toml", "base.toml"):
        shutil.copy(REPO / "firmware_cfg" / name, tmp_path / name)
    return tmp_path / "pi4-relayhat.toml"


def run_cli(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    return subprocess.run([str(VILLAGE), "agent", "relay-off", "-c", str(cfg)], capture_output=True, text=True,
                          timeout=60, env=env)


def test_relay_off_in_a_subprocess_for_a_pi_profile(tmp_path: Path) -> None:
    result = run_cli(write_config(tmp_path, str(pi_profile(tmp_path))))
    assert result.returncode == 0, result.stderr
    assert "BCM 26 driven high" in result.stdout  # active low: off is a high level


def test_relay_off_for_the_sim_profile_says_so(tmp_path: Path) -> None:
    result = run_cli(write_config(tmp_path, "sim"))
    assert result.returncode == 0, result.stderr
    assert "simulation" in result.stdout


def test_relay_off_with_a_bad_config_is_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[box\n")
    result = run_cli(cfg)
    assert result.returncode == 2 and "village:" in result.stderr


@pytest.mark.parametrize(("profile_active_high", "off_level"), [(False, True), (True, False)])
def test_relay_off_drives_the_inactive_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             profile_active_high: bool, off_level: bool) -> None:
    path = pi_profile(tmp_path)
    polarity = f"active_high = {str(profile_active_high).lower()}"
    path.write_text(path.read_text().replace("active_high = false", polarity))
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    factory = MockFactory()
    monkeypatch.setattr(Device, "pin_factory", factory)
    pin = factory.pin(26)
    pin.function = "output"
    pin.state = not off_level  # the agent died with the amplifier on
    assert relayoff.main(load_config(write_config(tmp_path, str(path)))) == 0
    assert pin.state == off_level
