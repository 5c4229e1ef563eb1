"""systemd/village-launch on its own, in a temp release root: slots whose bin/python is a tiny script that
records that it ran and exits the way we tell it. No Python of a slot runs, as on a box where the new
release cannot even import. Plus `systemd-analyze verify` of the rollback unit and the drop-in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.update.layout import Layout, Trial

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "systemd" / "village-launch"


def make_root(tmp: Path, codes: dict[str, int]) -> Layout:
    layout = Layout(tmp / "root")
    layout.ensure()
    for version, code in codes.items():
        bindir = layout.slot(version) / "bin"
        bindir.mkdir(parents=True)
        py = bindir / "python"
        py.write_text(f'#!/bin/sh\necho "{version} $*" >> "{tmp}/ran"\nexit {code}\n')
        py.chmod(0o755)
    return layout


def launch(layout: Layout, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(LAUNCHER), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "VILLAGE_ROOT": str(layout.root)})


def ran(tmp: Path) -> list[str]:
    return (tmp / "ran").read_text().splitlines() if (tmp / "ran").exists() else []


def test_a_release_that_never_starts_is_switched_back_after_max_boots(tmp_path: Path) -> None:
    layout = make_root(tmp_path, {"1.0.0": 0, "1.0.1": 1})
    layout.switch("1.0.1", "1.0.0")
    layout.write_trial(Trial(0, 2, int(time.time()) + 3600, "release", "1.0.0", "1.0.1", "cmd-7"))
    for _ in range(2):
        assert launch(layout, "-c", "/etc/agent.toml").returncode == 1  # the new one crashes
    assert layout.read_trial() is not None and layout.read_trial().boots == 2
    third = launch(layout, "-c", "/etc/agent.toml")
    assert third.returncode == 0, third.stderr
    assert ran(tmp_path) == ["1.0.1 -m agent.cli agent run -c /etc/agent.toml"] * 2 + \
        ["1.0.0 -m agent.cli agent run -c /etc/agent.toml"]
    assert layout.current_version() == "1.0.0" and layout.read_trial() is None
    outcome = layout.read_outcome()
    assert outcome is not None and (outcome.state, outcome.kind, outcome.version, outcome.cmd_id) == \
        ("rolled_back", "release", "1.0.1", "cmd-7")
    assert "2 starts" in outcome.reason


def test_past_the_deadline_the_trial_is_rolled_back_before_the_new_release_runs(tmp_path: Path) -> None:
    layout = make_root(tmp_path, {"1.0.0": 0, "1.0.1": 0})
    layout.switch("1.0.1", "1.0.0")
    layout.write_trial(Trial(0, 3, int(time.time()) - 1, "release", "1.0.0", "1.0.1", "cmd-8"))
    assert launch(layout).returncode == 0
    assert ran(tmp_path) == ["1.0.0 -m agent.cli agent run"]
    assert "health timeout" in layout.read_outcome().reason


def test_a_healthy_trial_only_counts_boots_and_a_damaged_trial_file_is_dropped(tmp_path: Path) -> None:
    layout = make_root(tmp_path, {"1.0.0": 0, "1.0.1": 0})
    layout.switch("1.0.1", "1.0.0")
    layout.write_trial(Trial(0, 3, int(time.time()) + 3600, "release", "1.0.0", "1.0.1", "cmd-9"))
    assert launch(layout).returncode == 0
    assert layout.read_trial().boots == 1 and layout.current_version() == "1.0.1"
    layout.trial_file.write_text("garbage $(touch /tmp/x) ;\n")
    r = launch(layout)
    assert r.returncode == 0 and "unreadable trial" in r.stderr
    assert not layout.trial_file.exists() and layout.current_version() == "1.0.1"


def test_on_failure_rolls_a_config_trial_back_and_does_nothing_without_one(tmp_path: Path) -> None:
    layout = make_root(tmp_path, {"1.0.0": 2})
    layout.switch("1.0.0", None)
    assert launch(layout, "--rollback").returncode == 1  # no trial: nothing to do, the unit stays failed
    layout.overlay.write_text('{"broadcast": {"default_volume": 5}}')
    layout.overlay_prev.write_text("{}")
    layout.write_trial(Trial(1, 3, int(time.time()) + 3600, "config", "-", "cfg-0123456789abcdef", "cmd-10"))
    assert launch(layout, "--rollback").returncode == 0
    assert layout.overlay.read_text() == "{}" and not layout.overlay_prev.exists()
    assert layout.read_outcome().kind == "config" and ran(tmp_path) == []  # OnFailure starts nothing itself


def test_the_rollback_unit_and_the_drop_in_verify(tmp_path: Path) -> None:
    host_units = Path("/usr/lib/systemd/system")
    if shutil.which("systemd-analyze") is None or not host_units.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is needed (CI=true)")
        pytest.skip("no systemd-analyze / systemd units on this machine")
    root = tmp_path / "r"
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for name in ("village-agent.service", "village-agent-rollback.service"):
        shutil.copy2(REPO / "systemd" / name, etc / name)
    (etc / "village-agent.service.d").mkdir()
    shutil.copy2(REPO / "systemd" / "dropins" / "village-agent-update.conf",
                 etc / "village-agent.service.d" / "update.conf")
    for exe in ("opt/village-agent/bin/village-launch", "opt/village-agent/current/bin/python",
                "opt/village-agent/venv/bin/village", "bin/systemctl"):
        (root / exe).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(LAUNCHER, root / exe)
        (root / exe).chmod(0o755)
    for unit in ("village-agent.service", "village-agent-rollback.service"):
        r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(etc / unit)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    # the drop-in is what verify judged: without the launcher, the agent unit no longer verifies
    (root / "opt/village-agent/bin/village-launch").unlink()
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(etc / "village-agent.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "village-launch" in r.stderr
