"""Codec modules are sans-I/O: importing them pulls in no asyncio, serial, bleak or gpiozero; drivers/ never agent/.

The gateway reader may use asyncio (it is the I/O loop) but must not pull in pyserial or bleak: the agent
imports it, and the concrete transports are chosen by the composition root (agent/hardware.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("asyncio", "serial", "serial_asyncio", "bleak", "gpiozero")
NO_DEVICE_IO = ("serial", "serial_asyncio", "bleak", "gpiozero")
# module -> what importing it must not pull in
MODULES = {
    **{f"drivers.wristband.{m}": FORBIDDEN for m in ("events", "codec", "watch", "ingics", "nmea", "bleadv", "tags")},
    "drivers.wristband.reader": NO_DEVICE_IO,
    # the sans-I/O RTSP codec and probe session: probe.py owns the socket
    "drivers.camera.rtsp": (*FORBIDDEN, "socket", "ssl", "selectors", "subprocess"),
}


def _path(module: str) -> Path:
    return REPO / (module.replace(".", "/") + ".py")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_codec_imports_nothing_with_io(module: str) -> None:
    forbidden = MODULES[module]
    code = (
        "import sys\n"
        f"import {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_codec_sources_name_no_io_library_and_drivers_never_import_agent() -> None:
    checked = {_path(m): f for m, f in MODULES.items()}
    assert all(p.is_file() for p in checked), "a module listed here was moved or renamed"
    for path in sorted((REPO / "drivers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "agent", f"{path} imports {name}"
                if path in checked:
                    assert name.split(".")[0] not in checked[path], f"{path} imports {name}"


def test_agent_wearables_imports_no_device_library() -> None:
    """The feature reads gateways through drivers.wristband.reader only; pyserial/bleak come via agent.hardware."""
    code = (
        "import sys\n"
        "import agent.wearables.service\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {NO_DEVICE_IO!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"agent.wearables.service imports {out.stdout.strip()}"
