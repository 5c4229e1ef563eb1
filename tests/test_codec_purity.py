"""Codec modules are sans-I/O: importing them pulls in no asyncio, serial, bleak or gpiozero; drivers/ never agent/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CODECS = ["events", "codec", "watch", "ingics", "nmea", "bleadv", "tags"]
FORBIDDEN = ("asyncio", "serial", "serial_asyncio", "bleak", "gpiozero")


@pytest.mark.parametrize("module", CODECS)
def test_codec_imports_nothing_with_io(module: str) -> None:
    code = (
        "import sys\n"
        f"import drivers.wristband.{module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"drivers.wristband.{module} imports {out.stdout.strip()}"


def test_codec_sources_name_no_io_library_and_drivers_never_import_agent() -> None:
    for path in sorted((REPO / "drivers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "agent", f"{path} imports {name}"
                if path.parent.name == "wristband" and path.stem in CODECS:
                    assert name.split(".")[0] not in FORBIDDEN, f"{path} imports {name}"
