"""`village sim run` whose terminal goes away (SIGHUP) or that is told to stop (SIGTERM) takes its agent with it.

The agent runs in its own session, so it never gets the terminal's SIGHUP itself. It used to live on after
the terminal closed, reopening its gateway pty path, a number the system hands to the next terminal, and
pyserial then switched that terminal's output processing off (a staircase screen)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_i18n_sim_pty import scenario


def processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and entry.name != str(os.getpid()):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_stopped_run_leaves_no_agent_behind(tmp_path: Path, sig: signal.Signals) -> None:
    file = tmp_path / "s.toml"
    file.write_text(scenario("en").replace("duration_s = 90", "duration_s = 900"), encoding="utf-8")
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "sim", "run", "--lang", "en", "--scenario", str(file),
                             "--no-county", "--no-live", "--speed", "5", "--workdir", str(work)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the box is online at the county: the agent runs
            if "is online" in line:
                break
        agent = processes_with(f"agent run -c {work}/agent.toml")
        assert agent, "the agent is not running"
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode == 130
        deadline = time.monotonic() + 30
        while (left := processes_with(f"agent run -c {work}/agent.toml")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"agent {left} outlived the run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_with(f"-c {work}/"):  # anything this test started and left: never another's
            os.kill(pid, signal.SIGKILL)
