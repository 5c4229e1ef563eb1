"""Updates a box must refuse before it installs anything, with the reason in the receipt; a full disk during
the download; kill -9 of the whole process tree mid-download, mid-install and right after the switch.

Real agent processes from a release root in a temp dir (tests/update_harness.py), real mosquitto, a real
HTTPS server requiring the box's client certificate.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.release import schema_versions
from tests.support import Collector, wait_until
from tests.update_harness import (  # noqa: F401  (the fixtures, by their pytest names)
    A,
    B,
    Box,
    Bundles,
    ReleaseServer,
    fixture_bundles,
    fixture_ca,
    fixture_county,
    fixture_make_box,
    fixture_server,
    fixture_template,
    receipts,
    running_version,
    wait_receipt,
)

pytestmark = pytest.mark.timeout(240)


def assert_nothing_installed(box: Box) -> None:
    assert box.layout.current_version() == A
    assert sorted(p.name for p in box.layout.releases.iterdir()) == [A]
    assert box.layout.read_trial() is None
    assert not list(box.layout.downloads.glob("*.part"))


def test_bad_signature_hash_mismatch_other_arch_and_downgrade_are_refused_before_anything_is_installed(
        make_box, bundles: Bundles, server: ReleaseServer, county: Collector) -> None:
    box = make_box()
    cases = []
    # signed by a key the box does not trust for releases, under the release key's name
    rogue = bundles.bundle("rogue", B, key=_key(bundles.rogue_key_path))
    cases.append((rogue, server.publish(rogue), "bad_signature"))
    # signed by the COMMAND key: a command key can never sign a release
    cmdkey = bundles.bundle("cmdkey", B, key=bundles.cmd_key, kid="county-test")
    cases.append((cmdkey, server.publish(cmdkey), "bad_signature"))
    other = bundles.bundle("armv7", B, arch="armv7l")
    cases.append((other, server.publish(other), "wrong_arch"))
    above = bundles.bundle("min", B, min_from="1.0.1")  # this box runs 1.0.0
    cases.append((above, server.publish(above), "below_min_version"))
    # a release that would migrate a state store past what 1.0.0 reads: no way back after a rollback
    newer = bundles.bundle("schema", B, schemas={**schema_versions(), "outbox": schema_versions()["outbox"] + 1})
    cases.append((newer, server.publish(newer), "schema_not_forward_compatible"))
    # a wheel on the server that is not the one the signed manifest names (same size, other bytes)
    tampered = bundles.bundle("tampered", B)
    url = server.publish(tampered)
    wheel = server.docroot / "releases" / "tampered" / "wheels" / tampered.manifest.project_wheel.file
    data = bytearray(wheel.read_bytes())
    data[100] ^= 0xFF
    wheel.write_bytes(bytes(data))
    cases.append((tampered, url, "hash_mismatch"))
    for bundle, url, reason in cases:
        cmd = box.update(county, url, bundle)
        r = wait_receipt(county, box, cmd, state="rejected")
        assert r["reason"] == reason, r
        assert r["detail"]
        assert_nothing_installed(box)
    # the manifest itself is not the one the command named
    good = bundles.bundle("good", B)
    cmd = box.command(county, "agent.update", {"version": B, "manifest_sha256": "0" * 64,
                                               "url": server.publish(good)})
    assert wait_receipt(county, box, cmd, state="rejected")["reason"] == "hash_mismatch"
    # a URL outside the box's release server is refused before any request
    cmd = box.command(county, "agent.update", {"version": B, "manifest_sha256": good.digest,
                                               "url": "https://elsewhere.example/m.jws"})
    assert wait_receipt(county, box, cmd, state="failed")["reason"] == "not_allowed"
    assert_nothing_installed(box)
    assert not box.layout.wheel(tampered.manifest.project_wheel.sha256).exists()
    assert running_version(county, box) == A


def _key(path: Path):
    from agent.keys import load_private_key

    return load_private_key(path)


def test_a_disk_that_fills_during_the_download_refuses_cleanly_and_the_agent_keeps_running(
        make_box, bundles: Bundles, server: ReleaseServer, county: Collector) -> None:
    # A real full disk: a 256 KiB tmpfs mounted where downloads land (root only). The release root itself
    # has room, so the space check before the download passes and the write fails with ENOSPC part way.
    box = make_box()
    downloads = box.layout.downloads
    downloads.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(downloads)],
                                           capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a tmpfs needs root (CI=true)")
        pytest.skip("mounting a small tmpfs needs root")
    try:
        b = bundles.bundle("b", B)
        assert b.manifest.project_wheel.size > 256 * 1024
        cmd = box.update(county, server.publish(b), b)
        r = wait_receipt(county, box, cmd, state="failed")
        assert r["reason"] == "disk_full" and "space" in r["detail"], r
        assert not list(downloads.iterdir())  # the partial file is gone
        assert_nothing_installed(box)
        assert running_version(county, box) == A
    finally:
        box.stop()
        subprocess.run(["umount", str(downloads)], check=False)


def test_kill_9_mid_download_mid_install_and_right_after_the_switch_always_starts_a_working_version(
        make_box, bundles: Bundles, server: ReleaseServer, county: Collector) -> None:
    box = make_box(keep_previous_s=2.0)
    b = bundles.bundle("b", B)
    url = server.publish(b)
    wheel = b.manifest.project_wheel

    # 1. mid-download: the server holds the project wheel after 64 KiB; the box is killed there
    server.hold(64 * 1024)
    box.update(county, url, b)
    assert server.httpd.holding.wait(60)
    part = box.layout.downloads / f"{wheel.sha256}.whl.part"
    wait_until(lambda: part.exists() and part.stat().st_size > 0, 30)  # the box wrote what it got, then waits
    box.loop.kill_tree()
    server.unhold()
    wait_until(lambda: box.loop.starts >= 2, 30)
    box.wait_connected()
    assert running_version(county, box) == A
    assert part.exists() and 0 < part.stat().st_size < wheel.size

    # 2. mid-install: resumed download (a Range request), then killed while pip runs in the new slot
    cmd = box.update(county, url, b)
    wait_receipt(county, box, cmd, state="started", step="downloaded")
    assert any(p.endswith(wheel.file) and rng and rng.startswith("bytes=") for p, rng in server.requests)
    partial = box.layout.partial(B)
    wait_until(lambda: partial.exists(), 60)
    box.loop.kill_tree()
    wait_until(lambda: box.loop.starts >= 3, 30)
    box.wait_connected()
    assert box.layout.current_version() == A
    assert running_version(county, box) == A

    # 3. right after the switch: `current` names B, the process tree dies before anything else happens
    cmd = box.update(county, url, b)
    wait_until(lambda: box.layout.current_version() == B, 90)
    box.loop.kill_tree()
    r = wait_receipt(county, box, cmd, 90, state="finished", step="healthy")
    assert r["version"] == B
    assert not partial.exists()
    assert running_version(county, box) == B
    assert [x.get("step") for x in receipts(county, cmd)].count("healthy") >= 1
    # healthy for keep_previous_s: the previous slot goes, the current one stays
    wait_until(lambda: not (box.layout.releases / A).exists() and box.layout.previous_version() is None, 30)
    assert sorted(p.name for p in box.layout.releases.iterdir()) == [B]
