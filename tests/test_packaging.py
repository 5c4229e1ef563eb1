"""What a box, a fresh machine and a clone of the project alone get.

The box install (`pip install village-edge`, no extras, what scripts/install-box does) must carry only
what agent/ and drivers/ import: the agent runs in a 256 MB `MemoryMax` service. The check needs no
network and no second venv: it lays out a site directory holding ONLY the distributions the base
dependencies resolve to (read from this venv's metadata) plus agent/ and drivers/, and imports every
module of the agent from it in a `python -I -S` subprocess, where nothing else can be found.
"""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from agent.cli import EXTRA_MODULES

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# what the simulator and the tests use, and what they pull in: none of it belongs on a box
NOT_ON_A_BOX = {"rich", "amqtt", "psutil", "typer", "websockets", "pyyaml", "pydantic", "pytest", "hypothesis",
                "shapely", "mypy"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `requirements` resolve to (transitively, no extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _norm(req.name)
        if name in found:
            continue
        dist = metadata.distribution(req.name)
        found[name] = dist
        todo += [Requirement(r) for r in dist.requires or ()]
    return found


def _box_site(root: Path, *packages: str) -> Path:
    """A directory with the box's distributions and the project's `packages`, as symlinks."""
    site = root / "site"
    site.mkdir()
    for dist in _closure(PYPROJECT["dependencies"]).values():
        for top in {f.parts[0] for f in dist.files or () if f.parts[0] != ".."}:
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    for pkg in packages:
        (site / pkg).symlink_to(REPO / pkg)
    return site


def _run_in(site: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    prelude = f"import sys; sys.path[:0] = [{str(site)!r}]; sys.argv[1:] = {list(args)!r}\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, cwd=site)


def test_the_box_install_pulls_only_what_the_agent_runs() -> None:
    base = {_norm(Requirement(r).name) for r in PYPROJECT["dependencies"]}
    assert base == {"paho-mqtt", "aiosqlite", "cryptography", "gpiozero", "pyserial", "pyserial-asyncio", "bleak"}
    assert not NOT_ON_A_BOX & set(_closure(PYPROJECT["dependencies"]))
    extras = PYPROJECT["optional-dependencies"]
    assert {"sim", "county", "test"} <= set(extras)
    # the CLI names the extra by what it checks for: the same packages as the extra
    assert {_norm(Requirement(r).name) for r in extras["sim"]} == set(EXTRA_MODULES["sim"])
    # the distributions whose import name differs
    imported_as = {"argon2-cffi": "argon2", "xstatic-leaflet": "xstatic.pkg.leaflet"}
    assert {imported_as.get(n, n) for n in (_norm(Requirement(r).name) for r in extras["county"])} \
        == set(EXTRA_MODULES["county"])
    test = [Requirement(r) for r in extras["test"]]
    assert any(_norm(r.name) == "village-edge" and r.extras == {"sim", "county"} for r in test)
    assert {"mypy", "pytest", "ruff"} <= {_norm(r.name) for r in test}


def test_the_agent_imports_nothing_outside_the_box_install(tmp_path: Path) -> None:
    modules = sorted(m.name for pkg in ("agent", "drivers")
                     for m in pkgutil.walk_packages([str(REPO / pkg)], prefix=f"{pkg}."))
    assert len(modules) > 40 and "agent.app" in modules and "drivers.amp.relay" in modules
    site = _box_site(tmp_path, "agent", "drivers")
    (tmp_path / "box.toml").write_text('[box]\nid = "b1"\nprofile = "pi4-relayhat"\n'
                                       f'state_dir = "{tmp_path / "state"}"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    result = _run_in(site, """
        import importlib
        bad = []
        config, foreign, names = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3:]
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                bad.append(f"{name}: {exc}")
        print("\\n".join(bad))
        print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & foreign))
        from agent.cli import main
        print("CHECK", main(["agent", "check", "-c", config]))
    """, str(tmp_path / "box.toml"), ",".join([*NOT_ON_A_BOX, "sim", "county"]), *modules)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "", "agent modules that need more than the box install:\n" + result.stdout
    assert "LOADED []" in lines and "CHECK 0" in lines, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize(("area", "packages", "missing"), [("sim", ("agent", "drivers", "sim", "county"), "rich"),
                                                           ("county", ("agent", "drivers"), "sqlalchemy")])
def test_a_subcommand_without_its_extra_says_which_to_install(tmp_path: Path, area: str, packages: tuple[str, ...],
                                                              missing: str) -> None:
    site = _box_site(tmp_path, *packages)
    result = _run_in(site, """
        from agent.cli import main
        sys.exit(main(sys.argv[1:]))
    """, area, "--help")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == (f"village {area}: needs the [{area}] extra ({missing} is not installed): "
                             f"pip install 'village-edge[{area}]'\n")


# ---------------------------------------------------------------- a clone of the project alone
def _pytest_on_test_cap(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "VILLAGE_SHARED_DIR")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_cap.py", "tests/test_watch_codec.py::test_every_traccar_frame_decodes_to_"
                           "what_its_line_says"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**clean, "VILLAGE_SHARED_DIR": str(tmp_path / "no-shared"), **env})


def test_without_the_shared_test_data_its_tests_skip_saying_why(tmp_path: Path) -> None:
    result = _pytest_on_test_cap(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b3 skipped\b", result.stdout) and "error" not in result.stdout, result.stdout[-3000:]
    assert f"shared test data not found at {tmp_path / 'no-shared' / 'testdata' / 'peers'}" in result.stdout


def test_in_ci_missing_shared_test_data_fails(tmp_path: Path) -> None:
    result = _pytest_on_test_cap(tmp_path, CI="true")
    assert result.returncode == 1, result.stdout[-3000:]
    assert re.search(r"\b3 errors?\b", result.stdout) and "CI=true needs it" in result.stdout, result.stdout[-3000:]
