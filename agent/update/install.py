"""Install a verified release into its own venv slot, offline, and check it before anything switches.

    python -m venv --without-pip releases/.V.partial          (no network, no pip in the slot: fast)
    .V.partial/bin/python <pip wheel>/pip install --no-index --find-links <only the manifest's wheels> village-edge==V
    rename .V.partial -> releases/V
    releases/V/bin/python -m agent.cli agent check -c <the box's config>   (the new code judges today's config)

pip runs from a pip wheel (the interpreter's ensurepip bundle, or Debian's /usr/share/python-wheels), the
way ensurepip itself does: the slot never needs pip installed, and nothing is fetched from an index.
A slot that fails any step is deleted; `current` is not touched here (agent/update/layout.py switches).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from agent.release import Manifest
from agent.update.layout import Layout
from drivers.aio import wait_within

PIP_WHEEL_DIRS = ("/usr/share/python-wheels",)
STEP_TIMEOUT_S = 600.0


class InstallError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


async def _run(*argv: str | Path, limit_s: float = STEP_TIMEOUT_S) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*map(str, argv), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                                                cwd="/",  # never the caller's tree first on sys.path
                                                env={**os.environ, "PIP_NO_INPUT": "1",
                                                     "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    try:
        out, _ = await wait_within(proc.communicate(), limit_s)
    except BaseException:  # cancelled (the agent stops) or timed out: never leave pip running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode or 0, out.decode("utf-8", "replace")


def _tail(text: str, n: int = 2) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:])[:400] or "(no output)"


async def pip_wheel(python: Path) -> Path:
    code, out = await _run(python, "-c", "import ensurepip, os; print(os.path.dirname(ensurepip.__file__))",
                           limit_s=30)
    dirs = [Path(out.strip()) / "_bundled"] if code == 0 else []
    dirs += [Path(d) for d in PIP_WHEEL_DIRS]
    for d in dirs:
        found = sorted(d.glob("pip-*.whl")) if d.is_dir() else []
        if found:
            return found[-1]
    raise InstallError("install_failed", f"no pip wheel for {python} (ensurepip bundle or python3-pip-whl)")


async def install_slot(layout: Layout, manifest: Manifest, python: Path, config: Path) -> Path:
    """releases/<version>, installed from the verified wheels in layout.wheels and checked."""
    version = manifest.version
    partial, slot = layout.partial(version), layout.slot(version)
    shutil.rmtree(partial, ignore_errors=True)  # left by a power cut during an earlier attempt
    if slot.exists() and version not in (layout.current_version(), layout.previous_version()):
        shutil.rmtree(slot)  # installed but never switched to (killed before the switch): do it again
    if slot.exists():
        raise InstallError("install_failed", f"release {version} is the current or previous slot")
    house = layout.downloads / f"install-{version}"
    shutil.rmtree(house, ignore_errors=True)
    house.mkdir(parents=True)
    try:
        for w in manifest.wheels:  # only the manifest's wheels, under their names: pip can choose nothing else
            os.link(layout.wheel(w.sha256), house / w.file)
        code, out = await _run(python, "-m", "venv", "--without-pip", partial)
        if code != 0:
            raise InstallError("install_failed", f"venv: {_tail(out)}")
        pip = await pip_wheel(python)
        code, out = await _run(partial / "bin" / "python", f"{pip}/pip", "install", "--no-index", "--no-cache-dir",
                               "--find-links", house, f"village-edge=={version}")
        if code != 0:
            raise InstallError("install_failed", f"pip: {_tail(out)}")
        os.replace(partial, slot)
    except OSError as exc:
        raise InstallError("install_failed", f"{exc.strerror or exc}") from None
    finally:
        shutil.rmtree(house, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    code, out = await _run(slot / "bin" / "python", "-m", "agent.cli", "agent", "check", "-c", config, limit_s=120)
    if code != 0:
        shutil.rmtree(slot, ignore_errors=True)
        raise InstallError("check_failed", f"village agent check under {version}: {_tail(out)}")
    return slot
