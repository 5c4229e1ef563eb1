"""Production never imports the simulator: the sim hands its twins to the agent, the agent does not reach in.

agent/hardware.py used to import sim.audio and sim.wristband for a "sim" profile, so a box installed without
the simulator depended on it. Now a "sim" profile's hardware comes from the `village_edge.hardware` entry
point the simulator registers (pyproject.toml). Checked two ways: no module of agent/ or drivers/ names
sim/ or county/ in any import, on any code path (the source, statically); and in a subprocess where sim/
and county/ cannot be imported at all, every agent module imports, a real-profile agent is built and
`village agent check` passes, while a "sim" profile is refused in one line naming what is missing.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import agent_config_dict, toml_dumps

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("sim", "county", "tests", "bench")

BLOCKER = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {forbidden!r}:
            raise ImportError(f"{{name}} is not installed on this box (blocked by the test)")
        return None
sys.meta_path.insert(0, Blocked())
for name in [n for n in sys.modules if n.split(".")[0] in {forbidden!r}]:
    del sys.modules[name]
"""


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_agent_or_driver_module_imports_the_simulator_or_the_console() -> None:
    found = {
        str(path.relative_to(REPO)): bad
        for package in ("agent", "drivers")
        for path in sorted((REPO / package).rglob("*.py"))
        if (bad := [n for n in imports_of(path) if n.split(".")[0] in FORBIDDEN])
    }
    # agent/cli.py dispatches `village sim|county` by module name (importlib), never by an import statement
    assert found == {}, found


def run_blocked(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKER.format(forbidden=FORBIDDEN) + code)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={"PATH": "/usr/bin:/bin", "GPIOZERO_PIN_FACTORY": "mock",
                                         "PYTHONPATH": str(REPO)})


def test_every_agent_module_imports_and_a_real_box_builds_without_the_simulator(tmp_path: Path) -> None:
    doc = agent_config_dict(tmp_path / "state", "mqtt://127.0.0.1:1883")
    doc["box"]["profile"] = "pi4-relayhat"
    (tmp_path / "box.toml").write_text(toml_dumps(doc))
    result = run_blocked(f"""
import importlib, json, pkgutil
import agent, drivers
mods = []
for pkg in (agent, drivers):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
        mods.append(m.name)
from agent.app import build_agent
from agent.config import load_config
agent_ = build_agent(load_config({str(tmp_path / "box.toml")!r}))
hw = agent_.context.hardware
print(json.dumps({{"modules": len(mods), "services": [s.name for s in agent_.services],
                  "relay": type(hw.relay.relay).__name__, "led": type(hw.status_led).__name__,
                  "sim_loaded": sorted(n for n in sys.modules if n.split(".")[0] in {FORBIDDEN!r})}}))
""", tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["modules"] > 50 and out["sim_loaded"] == []
    assert out["relay"] == "GpioAmpRelay" and out["led"] == "GpioStatusLed"  # real drivers, mock pins
    assert "status_led" in out["services"] and "broadcast" in out["services"]


@pytest.mark.parametrize(("profile", "code"), [("pi4-relayhat", 0), ("sim", 2)])
def test_village_agent_check_without_the_simulator(tmp_path: Path, profile: str, code: int) -> None:
    doc = agent_config_dict(tmp_path / "state", "mqtt://127.0.0.1:1883")
    doc["box"]["profile"] = profile
    (tmp_path / "box.toml").write_text(toml_dumps(doc))
    result = run_blocked("from agent.cli import main\nsys.exit(main(sys.argv[1:]))\n", tmp_path,
                         "agent", "check", "-c", str(tmp_path / "box.toml"))
    assert result.returncode == code, result.stdout + result.stderr
    if code == 0:
        assert '"pi4-relayhat"' in result.stdout
    else:  # one line, naming the profile, the key and what to install; no traceback
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "sim" in lines[0] and "kind" in lines[0], result.stderr
        assert "cannot be imported" in lines[0] and "sim.hardware" in lines[0]


def test_an_idle_box_imports_only_what_its_config_uses(tmp_path: Path) -> None:
    """Idle RSS (bench/rss.py): pyserial/bleak load when a gateway is opened, the camera feature and its
    drivers only when cameras are configured (they used to load on every box: about 1.4 MB)."""
    doc = agent_config_dict(tmp_path / "state", "mqtt://127.0.0.1:1883")
    doc["box"]["profile"] = "pi4-relayhat"
    (tmp_path / "box.toml").write_text(toml_dumps(doc))
    result = run_blocked(f"""
import json
from agent.app import build_agent
from agent.config import load_config
build_agent(load_config({str(tmp_path / "box.toml")!r}))
lazy = ("serial", "serial_asyncio", "bleak", "agent.cameras.service", "drivers.camera.probe",
        "drivers.wristband.transport")
print(json.dumps(sorted(m for m in lazy if m in sys.modules)))
""", tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_hardware_seam_is_typed_with_the_drivers_protocols() -> None:
    """agent/context.py `Hardware` typed relay, player, tts and camera probes as Any: nothing checked that a
    driver or a twin fits what the features call. Now they are the drivers' Protocols (mypy checks the
    features against them), and the real drivers and the twins satisfy them."""
    import typing
    from collections.abc import Callable

    from gpiozero.pins.mock import MockFactory

    from agent.app import ReportedRelay
    from agent.context import Hardware
    from agent.sdnotify import StatusBoard
    from drivers.amp.relay import AmpRelay, GpioAmpRelay, NoRelay
    from drivers.audio.base import AudioPlayer, Tts
    from drivers.audio.player import AlsaPlayer
    from drivers.audio.tts import EspeakTts
    from drivers.camera.base import CameraProbes
    from drivers.led.status import GpioStatusLed, StatusLight
    from drivers.wristband.codec import GatewayCodec
    from drivers.wristband.reader import GatewayTransport
    from sim.amp import TwinAmpRelay
    from sim.audio import SilentTts, TwinPlayer

    names = {"AmpRelay": AmpRelay, "AudioPlayer": AudioPlayer, "Tts": Tts, "CameraProbes": CameraProbes,
             "StatusLight": StatusLight, "GatewayCodec": GatewayCodec, "GatewayTransport": GatewayTransport}
    hints = typing.get_type_hints(Hardware, localns=names)
    assert hints["relay"] == AmpRelay | None and hints["player"] == AudioPlayer | None
    assert hints["tts"] == Tts | None and hints["camera_probes"] == CameraProbes | None
    assert hints["status_led"] == StatusLight | None
    assert hints["gateway_opener"] == Callable[[str], GatewayTransport] | None
    assert hints["decoder_factory"] == Callable[[str], GatewayCodec] | None
    factory = MockFactory()
    relays = [GpioAmpRelay(17, pin_factory=factory), NoRelay(), TwinAmpRelay(18)]
    relays.append(ReportedRelay(relays[0], StatusBoard(lambda m: True)))
    assert all(isinstance(r, AmpRelay) for r in relays)
    assert all(isinstance(p, AudioPlayer) for p in (AlsaPlayer(), TwinPlayer()))
    assert all(isinstance(t, Tts) for t in (EspeakTts("cmn"), SilentTts()))
    assert isinstance(GpioStatusLed(27, pin_factory=factory), StatusLight)
