"""`village release build` and the manifest checks a box makes before it downloads a wheel."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.keys import load_private_key, load_public_key, new_keypair
from agent.release import (
    Manifest,
    ManifestError,
    WheelEntry,
    check_applicable,
    parse_manifest,
    parse_version,
    repack_distribution,
    schema_versions,
    sha256_file,
    sign_manifest,
    verify_manifest,
)

REPO = Path(__file__).resolve().parent.parent


def manifest(**kw: object) -> Manifest:
    base: dict = dict(name="village-edge", version="1.2.0", python="cp311", arch="aarch64", min_from="1.0.0",
                      created=1, deps_bundled=False,
                      wheels=(WheelEntry("village_edge-1.2.0-py3-none-any.whl", "a" * 64, 10, True),))
    base.update(kw)
    return Manifest(**base)


def test_release_build_makes_a_signed_bundle_that_verifies_only_with_the_release_key(tmp_path: Path) -> None:
    _, pub = new_keypair("rel", tmp_path / "k")
    cmd_key, cmd_pub = new_keypair("cmd", tmp_path / "k")
    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-m", "agent.cli", "release", "build", "--source", str(REPO), "--out", str(out),
                        "--key", str(tmp_path / "k" / "rel.key"), "--kid", "rel", "--version", "7.1.0",
                        "--min-from", "7.0.0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "NOT bundled" in r.stderr  # said clearly, not silently
    token = (out / "manifest.jws").read_bytes()
    m = verify_manifest(token, {"rel": load_public_key(pub)})
    assert (m.version, m.min_from, m.arch, m.deps_bundled) == ("7.1.0", "7.0.0", "any", False)
    assert dict(m.schemas) == schema_versions()
    assert set(dict(m.schemas)) == {"outbox", "replay", "broadcast", "wearables"}
    [w] = m.wheels
    assert w.project and w.file == "village_edge-7.1.0-py3-none-any.whl"
    assert sha256_file(out / "wheels" / w.file) == w.sha256 and (out / "wheels" / w.file).stat().st_size == w.size
    with zipfile.ZipFile(out / "wheels" / w.file) as z:
        assert '__version__ = "7.1.0"' in z.read("agent/__init__.py").decode()
    # the command key does not sign releases
    with pytest.raises(ManifestError) as exc:
        verify_manifest(token, {"cmd": load_public_key(cmd_pub)})
    assert exc.value.reason == "bad_signature"
    forged = sign_manifest(m, load_private_key(cmd_key), "rel")
    with pytest.raises(ManifestError) as exc:
        verify_manifest(forged.encode(), {"rel": load_public_key(pub)})
    assert exc.value.reason == "bad_signature"
    shown = subprocess.run([sys.executable, "-m", "agent.cli", "release", "show", str(out / "manifest.jws"), "--pub",
                            str(pub), "--kid", "rel"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["sha256"] == sha256_file(out / "manifest.jws")
    again = subprocess.run([sys.executable, "-m", "agent.cli", "release", "build", "--out", str(out), "--key",
                            str(tmp_path / "k" / "rel.key"), "--kid", "rel"], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
    assert again.returncode == 1 and "not empty" in again.stderr


def test_repacked_dependency_wheels_are_byte_identical_build_after_build(tmp_path: Path) -> None:
    dist = importlib.metadata.distribution("paho-mqtt")
    one = repack_distribution(dist, tmp_path / "one")
    two = repack_distribution(dist, tmp_path / "two")
    assert one.name == two.name and one.name.startswith("paho_mqtt-") and one.name.endswith("-none-any.whl")
    assert sha256_file(one) == sha256_file(two)  # so a release where only the project changed re-uses them
    with zipfile.ZipFile(one) as z:
        names = z.namelist()
        assert "paho/mqtt/client.py" in names and any(n.endswith(".dist-info/RECORD") for n in names)
        assert not any(n.endswith("INSTALLER") or "__pycache__" in n for n in names)


def test_manifest_fields_are_checked_and_a_box_refuses_what_does_not_fit_it() -> None:
    good = manifest().payload()
    assert parse_manifest(good) == manifest()
    for change, word in ((dict(type="x"), "village-release"), (dict(version="1.2.0rc1"), "version"),
                         (dict(arch="x86 64"), "arch"), (dict(wheels=[]), "wheels"),
                         (dict(wheels=[{**good["wheels"][0], "sha256": "A" * 64}]), "sha256"),
                         (dict(wheels=[{**good["wheels"][0], "file": "../../etc/passwd.whl"}]), "file name"),
                         (dict(wheels=[{**good["wheels"][0], "project": False}]), "exactly one")):
        with pytest.raises(ManifestError) as exc:
            parse_manifest({**good, **change})
        assert exc.value.reason == "bad_manifest" and word in str(exc.value), change
    m = manifest()
    check_applicable(m, "1.0.0", arch="aarch64", py="cp311")
    for running, arch, py, reason in (("1.0.0", "armv7l", "cp311", "wrong_arch"), ("1.0.0", "aarch64", "cp312",
                                      "wrong_python"), ("0.9.9", "aarch64", "cp311", "below_min_version"),
                                      ("1.2.0", "aarch64", "cp311", "same_version")):
        with pytest.raises(ManifestError) as exc:
            check_applicable(m, running, arch=arch, py=py)
        assert exc.value.reason == reason
    migrating = manifest(schemas=(("outbox", 9),))
    check_applicable(migrating, "1.0.0", arch="aarch64", py="cp311", schemas={"outbox": 9})
    with pytest.raises(ManifestError) as exc:
        check_applicable(migrating, "1.0.0", arch="aarch64", py="cp311", schemas={"outbox": 8})
    assert exc.value.reason == "schema_not_forward_compatible" and "outbox" in str(exc.value)
    assert parse_version("1.10.0") > parse_version("1.9.9")
    with pytest.raises(ManifestError):
        verify_manifest(b"x" * 300_000, {})
