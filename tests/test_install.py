"""scripts/install-box into a throwaway root, then the INSTALLED agent under a real NOTIFY_SOCKET.

The box is laid out in release slots (docs/updates.md): releases/<version>, `current`, the launcher, the
unit's update drop-in and the OnFailure= rollback unit; the agent is started through the launcher as the
drop-in's ExecStart does, and the installed box takes an update with the updater's own install and switch.

No real useradd on the host: the install uses `--root DIR` (sysusers, tmpfiles and `systemctl enable` all
work offline there). The venv is built from a wheelhouse kept in pytest's cache directory, so only the
first run on a machine downloads the dependencies; later runs rebuild just the project's own wheel.
The agent is then run as systemd would: same ExecStart arguments, NOTIFY_SOCKET bound by the test,
WATCHDOG_USEC/WATCHDOG_PID set for the agent's own pid (an `exec` from a shell keeps the pid).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Collector, Mosquitto

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install-box"
UNINSTALL = REPO / "scripts" / "uninstall-box"
BOX = "lhk-install-001"
VERSION = "0.1.0"  # pyproject.toml's: the wheelhouse's project wheel
OPT = "opt/village-agent"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="install-box runs as root (it chowns inside the root)"),
    pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed"),
]


# ---------------------------------------------------------------- fixtures: wheelhouse, installed root
@pytest.fixture(scope="session")
def wheelhouse(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider: build afresh
    wh = Path(cache.mkdir("village-wheelhouse")) if cache is not None else tmp_path_factory.mktemp("wheelhouse")
    deps = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    marker = wh / f"deps-{deps}"
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(wh)]
    # pytest-xdist: every worker with a test of this module builds here; the lock keeps one pip at a time in
    # the cache (and in the tree's build/), and each worker installs from its own copy, which no other
    # worker's rebuild of the project wheel can delete underneath it
    with (wh.parent / "village-wheelhouse.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for old in wh.glob("village_edge-*.whl"):
            old.unlink()
        if not marker.exists():
            subprocess.run([*pip, str(REPO)], check=True, capture_output=True, timeout=600)
            marker.touch()
        else:
            subprocess.run([*pip, "--no-deps", str(REPO)], check=True, capture_output=True, timeout=300)
        if cache is None:
            return wh
        own = tmp_path_factory.mktemp("wheelhouse")
        for wheel in wh.glob("*.whl"):
            shutil.copy2(wheel, own / wheel.name)
        return own


def run_install(root: Path, wheelhouse: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root), "--wheelhouse", str(wheelhouse), "--python",
         getattr(sys, "_base_executable", sys.executable),  # the interpreter under any venv
         *extra], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    root = tmp_path_factory.mktemp("root")
    result = run_install(root, wheelhouse, "--box-id", BOX, "--profile", "sim", "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def runtime_wheels(wheelhouse: Path) -> list[Path]:
    """The project's wheel and its dependencies' (setuptools included: colorzero imports it)."""
    return [w for w in wheelhouse.glob("*.whl") if not w.name.startswith(("wheel-", "pip-"))]


def gid_of(root: Path, name: str) -> int:
    m = re.search(rf"^{name}:x:(\d+):", (root / "etc" / "group").read_text(), re.M)
    assert m, name
    return int(m[1])


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# ---------------------------------------------------------------- the installation
def uid_of(root: Path, name: str) -> int:
    m = re.search(rf"^{name}:x:(\d+):", (root / "etc" / "passwd").read_text(), re.M)
    assert m, name
    return int(m[1])


def test_layout_owners_and_modes(installed: Path) -> None:
    r = installed
    gid = gid_of(r, "village")
    venv = r / OPT / "current"
    assert os.access(venv / "bin/village", os.X_OK)
    assert sorted(p.name for p in (r / "opt/village-agent/profiles").glob("*.toml")) == sorted(
        p.name for p in (REPO / "firmware_cfg").glob("*.toml"))
    config = r / "etc/village-agent/agent.toml"
    assert mode(config) == 0o640 and config.stat().st_gid == gid and config.stat().st_uid == 0
    assert f'id = "{BOX}"' in config.read_text() and 'profile = "sim"' in config.read_text()
    assert mode(r / "etc/village-agent") == 0o750
    key = r / "etc/village-agent/identity/box.key"
    assert mode(key) == 0o640 and key.stat().st_gid == gid and key.stat().st_uid == 0
    state = r / "var/lib/village-agent"
    assert mode(state) == 0o750 and state.stat().st_gid == gid and state.stat().st_uid != 0
    unit = r / "etc/systemd/system/village-agent.service"
    assert unit.read_text() == (REPO / "systemd/village-agent.service").read_text()
    wants = r / "etc/systemd/system/multi-user.target.wants/village-agent.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/village-agent.service"
    passwd = (r / "etc/passwd").read_text()
    assert re.search(r"^village:x:\d+:\d+:.*:/usr/sbin/nologin$", passwd, re.M)


def test_the_box_is_laid_out_in_release_slots(installed: Path, wheelhouse: Path) -> None:
    from agent.release import sha256_file
    from agent.update.layout import Layout

    r, opt = installed, installed / OPT
    layout = Layout(opt)
    assert os.readlink(opt / "current") == f"releases/{VERSION}" and layout.current_version() == VERSION
    assert sorted(p.name for p in (opt / "releases").iterdir()) == [VERSION]
    assert not (opt / "venv").exists()  # the single-venv layout is gone
    launcher = opt / "bin/village-launch"
    assert launcher.read_bytes() == (REPO / "systemd/village-launch").read_bytes() and mode(launcher) == 0o755
    dropin = r / "etc/systemd/system/village-agent.service.d/update.conf"
    assert dropin.read_text() == (REPO / "systemd/dropins/village-agent-update.conf").read_text()
    rollback = r / "etc/systemd/system/village-agent-rollback.service"
    assert rollback.read_text() == (REPO / "systemd/village-agent-rollback.service").read_text()
    # the agent (user village) installs new slots and switches `current` itself
    uid, gid = uid_of(r, "village"), gid_of(r, "village")
    for d in (opt, opt / "releases", opt / "releases" / VERSION, opt / "wheels", opt / "downloads", opt / "update"):
        assert (d.stat().st_uid, d.stat().st_gid) == (uid, gid), d
    assert (opt / "releases" / VERSION / "bin/python").lstat().st_uid == uid
    # the wheelhouse's wheels the slot runs are held by content: the next release downloads only what changed
    held = {p.name for p in (opt / "wheels").glob("*.whl")}
    assert held and all(sha256_file(p) + ".whl" == p.name for p in (opt / "wheels").glob("*.whl"))
    assert {sha256_file(w) + ".whl" for w in runtime_wheels(wheelhouse)} <= held  # the project's wheel too
    # the CLI of whatever release is current
    out = subprocess.run([str(opt / "bin/village"), "agent", "check", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "usage: village agent check" in out.stdout, out


def test_the_box_venv_holds_no_extras(installed: Path) -> None:
    # what install-box really put on the box: the agent's packages, not the simulator's or the tests'
    py = installed / OPT / "current" / "bin" / "python"
    found = subprocess.run([str(py), "-c", "import importlib.util as u, sys; "
                                           "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))",
                            "rich", "amqtt", "psutil", "typer", "websockets", "yaml", "pydantic", "pytest", "mypy",
                            "paho", "aiosqlite", "gpiozero", "bleak"], capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["paho", "aiosqlite", "gpiozero", "bleak"]


def test_the_identity_is_a_csr_for_this_box(installed: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    csr = x509.load_pem_x509_csr((installed / "etc/village-agent/identity/box.csr").read_bytes())
    assert csr.is_signature_valid
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [BOX]
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_a_second_run_changes_nothing_that_matters(installed: Path, wheelhouse: Path) -> None:
    key = installed / "etc/village-agent/identity/box.key"
    config = installed / "etc/village-agent/agent.toml"
    before = (key.read_bytes(), config.read_bytes(), (installed / "etc/passwd").read_text())
    old_venv = installed / OPT / "venv"  # what a box installed before release slots has
    (old_venv / "bin").mkdir(parents=True)
    result = run_install(installed, wheelhouse)  # no box id, profile or broker: all come from what is there
    assert result.returncode == 0, result.stderr
    assert "kept the key" in result.stdout and "keeping existing" in result.stdout
    assert (key.read_bytes(), config.read_bytes(), (installed / "etc/passwd").read_text()) == before
    assert not old_venv.exists() and os.readlink(installed / OPT / "current") == f"releases/{VERSION}"
    assert not (installed / OPT / "previous").exists()  # the same release again: nothing to go back to


def test_installed_unit_verifies_against_the_root(installed: Path) -> None:
    # verify resolves ExecStart inside --root, so this checks the real installed binary; the root needs
    # systemd's own units (sysinit.target, ...) beside ours, as on a real box
    host_units = Path("/usr/lib/systemd/system")
    if not host_units.is_dir():
        pytest.skip("no systemd units on this machine")
    units = installed / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree(host_units, units, symlinks=True)
    systemctl = installed / "bin/systemctl"  # the rollback unit's ExecStartPost, as a box has it
    if not systemctl.exists():
        systemctl.parent.mkdir(exist_ok=True)
        shutil.copy2(shutil.which("systemctl") or "/bin/systemctl", systemctl)
    unit = installed / "etc/systemd/system/village-agent.service"
    rollback = installed / "etc/systemd/system/village-agent-rollback.service"
    verify = ["systemd-analyze", "verify", f"--root={installed}", str(unit), str(rollback)]
    ok = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    exe = installed / OPT / "bin/village-launch"  # the drop-in's ExecStart, in the root
    exe.rename(exe.with_name("village-launch.aside"))
    try:
        bad = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    finally:
        exe.with_name("village-launch.aside").rename(exe)
    assert bad.returncode != 0 and "village-launch" in bad.stderr


def test_install_refuses_what_it_cannot_use(tmp_path: Path, wheelhouse: Path) -> None:
    result = run_install(tmp_path / "r", wheelhouse, "--box-id", "no spaces", "--profile", "sim",
                         "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode != 0 and "box id" in result.stderr
    result = run_install(tmp_path / "r2", wheelhouse, "--box-id", "ok-id", "--profile", "sim")
    assert result.returncode != 0 and "--broker" in result.stderr


def test_uninstall_keeps_data_then_purges(tmp_path: Path, wheelhouse: Path) -> None:
    root = tmp_path / "root"
    assert run_install(root, wheelhouse, "--box-id", BOX, "--profile", "sim", "--broker",
                       "mqtt://127.0.0.1:1").returncode == 0
    for _ in range(2):  # idempotent
        result = subprocess.run([str(UNINSTALL), "--root", str(root)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    assert not (root / "opt/village-agent").exists()
    assert not (root / "etc/systemd/system/village-agent.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/village-agent.service").exists()
    assert not (root / "etc/systemd/system/village-agent.service.d").exists()
    assert not (root / "etc/systemd/system/village-agent-rollback.service").exists()
    assert (root / "etc/village-agent/identity/box.key").exists() and (root / "var/lib/village-agent").is_dir()
    for _ in range(2):
        result = subprocess.run([str(UNINSTALL), "--root", str(root), "--purge"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
    assert not (root / "etc/village-agent").exists() and not (root / "var/lib/village-agent").exists()
    assert "village:" not in (root / "etc/passwd").read_text()
    assert not re.search(r"^village:", (root / "etc/group").read_text(), re.M)


# ---------------------------------------------------------------- the installed agent under "systemd"
class NotifyListener:
    """systemd's end of NOTIFY_SOCKET: an abstract Unix datagram socket, as systemd uses."""

    def __init__(self) -> None:
        self.address = f"@village-install-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.address[1:].encode())
        self.seen: list[str] = []

    def next(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            msg = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.seen.append(msg)
        return msg

    def wait_for(self, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.next(max(0.05, deadline - time.monotonic()))
            if msg is not None and what in msg.split("\n"):
                return
        raise AssertionError(f"{what} not received; got {self.seen[-10:]}")

    def drain(self) -> None:
        """Read everything already sent (once the agent has exited, that is all it will ever send)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.seen.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def relay(self) -> list[str]:
        """The relay as the agent's STATUS= lines said it, in order (agent.sdnotify.StatusBoard)."""
        from agent.sdnotify import StatusBoard

        return [f["relay"] for m in self.seen if (f := StatusBoard.parse(m)) is not None and "relay" in f]

    def close(self) -> None:
        self.sock.close()


def _agent_importable(root: Path) -> None:
    python = root / OPT / "current/bin/python"
    probe = subprocess.run([str(python), "-c", "import agent.app"], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr


@pytest.fixture
def box(installed: Path, tmp_path: Path, broker: Mosquitto) -> Iterator[dict[str, object]]:
    """An agent config for the installed root: state in tmp, the test broker, a county signing key."""
    _agent_importable(installed)
    from agent.keys import new_keypair

    key, pub = new_keypair("county-test", tmp_path / "keys")
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[box]
id = "{BOX}"
profile = "sim"
state_dir = "{state}"
heartbeat_s = 1

[mqtt]
url = "{broker.url}"
backoff_min_s = 0.2
backoff_max_s = 1

[update]
root = "{installed / OPT}"

[trust.keys]
county-test = "{pub}"
""")
    listener = NotifyListener()
    try:
        yield {"root": installed, "config": config, "key": key, "state": state, "notify": listener}
    finally:
        listener.close()


def start_agent(box: dict[str, object], log: Path, watchdog_s: float = 2.0,
                extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    root = box["root"]
    assert isinstance(root, Path)
    launcher = root / OPT / "bin/village-launch"  # the drop-in's ExecStart: it execs current's python
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VILLAGE_", "WATCHDOG_"))}
    env.update({
        "VILLAGE_ROOT": str(root / OPT),
        "NOTIFY_SOCKET": box["notify"].address,  # type: ignore[attr-defined]
        "WATCHDOG_USEC": str(int(watchdog_s * 1_000_000)),
        "VILLAGE_PROFILE_DIR": str(root / "opt/village-agent/profiles"),
        "JOURNAL_STREAM": "8:1234",  # as under systemd: log lines carry <N> priorities
        **(extra_env or {}),
    })
    # `exec` keeps the shell's pid, so WATCHDOG_PID names the agent itself, as systemd sets it
    cmd = f'WATCHDOG_PID=$$ exec "{launcher}" -c "{box["config"]}"'
    return subprocess.Popen(["/bin/sh", "-c", cmd], env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"), start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def play_command(box: dict[str, object], seconds: int = 600) -> tuple[str, str]:
    from agent.keys import load_private_key
    from agent.protocol import jws

    now = int(time.time())
    cmd_id = str(uuid.uuid4())
    payload = {"v": 1, "id": cmd_id, "kind": "broadcast.play", "iat": now, "exp": now + seconds,
               "to": [f"box:{BOX}"],
               "data": {"class": "daily", "level": 3, "title": "install test", "text": "测试广播。" * 40,
                        "audio": None, "start": None, "end": now + seconds, "volume": None}}
    return cmd_id, jws.sign(payload, load_private_key(box["key"]), "county-test")  # type: ignore[arg-type]


def receipt_states(collector: Collector, cmd_id: str) -> list[str]:
    return [e["data"]["state"] for e in collector.envelopes()
            if e.get("kind") == "cmd" and e["data"].get("cmd") == cmd_id]


def test_installed_agent_reports_ready_and_stops_cleanly_with_the_relay_off(
        box: dict[str, object], collector: Collector, tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    notify: NotifyListener = box["notify"]  # type: ignore[assignment]
    proc = start_agent(box, log)
    try:
        notify.wait_for("READY=1")
        notify.wait_for("WATCHDOG=1")
        collector.wait_for(lambda msgs: any(m.topic.endswith(f"/box/{BOX}/state") and m.json()["state"] == "online"
                                            for m in msgs))
        # switch the amplifier on with a real signed broadcast, then stop in the middle of it
        cmd_id, token = play_command(box)
        collector.publish(f"vc/v1/box/{BOX}/cmd", token)
        collector.wait_for(lambda _m: "started" in receipt_states(collector, cmd_id)
                           or {"failed", "rejected"} & set(receipt_states(collector, cmd_id)))
        assert "started" in receipt_states(collector, cmd_id), receipt_states(collector, cmd_id)
        notify.drain()
        assert "on" in notify.relay(), notify.seen[-10:]  # the broadcast switched it on
        rc = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    notify.wait_for("STOPPING=1", timeout=5)
    notify.drain()  # the agent has exited: everything it sent is here
    relay = notify.relay()
    assert relay and relay[-1] == "off", (relay, notify.seen[-10:])
    assert re.search(r"^<[0-7]>", text, re.M)  # journald priority prefixes under JOURNAL_STREAM
    assert "Traceback" not in text, text[-3000:]
    # status reads what the stopped agent left behind, without it running
    status = subprocess.run([str(box["root"] / OPT / "bin/village"),  # type: ignore[operator]
                             "agent", "status", "-c", str(box["config"]), "--json"], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["box"] == BOX and doc["outbox"]["present"] and doc["outbox"]["last_seq"] >= 1
    assert doc["link"]["present"]


def test_watchdog_restarts_a_hung_agent(box: dict[str, object], tmp_path: Path) -> None:
    notify: NotifyListener = box["notify"]  # type: ignore[assignment]
    watchdog_s = 1.0
    hung = start_agent(box, tmp_path / "hung.log", watchdog_s, {"VILLAGE_TEST_HANG_AFTER_S": "1"})
    try:
        notify.wait_for("READY=1")
        notify.wait_for("WATCHDOG=1")
        # systemd's part: no ping within WatchdogSec means the service is hung. Pings come every
        # watchdog_s / 2 while the loop turns, so a silence of 3 x watchdog_s is unambiguous.
        deadline = time.monotonic() + 60
        while notify.next(3 * watchdog_s) is not None:
            assert time.monotonic() < deadline, "the agent kept petting the watchdog"
        assert hung.poll() is None  # hung, not dead
        hung.send_signal(signal.SIGABRT)  # what systemd sends on a watchdog timeout
        assert hung.wait(30) != 0
    finally:
        if hung.poll() is None:
            hung.kill()
            hung.wait()
    assert "blocking the event loop" in (tmp_path / "hung.log").read_text(errors="replace")
    restarted = start_agent(box, tmp_path / "restarted.log", watchdog_s)  # Restart=always
    try:
        notify.wait_for("READY=1")
        notify.wait_for("WATCHDOG=1")
        assert stop(restarted) == 0
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.wait()


def test_the_installed_box_takes_an_update_and_runs_it(box: dict[str, object], collector: Collector,
                                                       tmp_path: Path, wheelhouse: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What agent.update does after the download, on the layout install-box made: only the new project wheel
    is fetched (install-box holds the rest), the updater's own install_slot and switch, then the launcher
    starts the new release. Last in the module: the shared root is on 0.1.1 after it."""
    import asyncio

    from agent.release import Manifest, WheelEntry, build_project_wheel, sha256_file
    from agent.update.install import install_slot
    from agent.update.layout import Layout

    root = box["root"]
    assert isinstance(root, Path)
    layout = Layout(root / OPT)
    new = build_project_wheel(REPO, tmp_path / "b", "0.1.1")
    digest = sha256_file(new)
    shutil.copyfile(new, layout.wheel(digest))  # what the verified download leaves
    deps = [w for w in runtime_wheels(wheelhouse) if not w.name.startswith("village_edge-")]
    entries = [WheelEntry(new.name, digest, new.stat().st_size, True),
               *(WheelEntry(w.name, sha256_file(w), w.stat().st_size) for w in deps)]
    assert all(layout.wheel(e.sha256).exists() for e in entries)  # nothing else to download
    manifest = Manifest("village-edge", "0.1.1", "cp311", "any", VERSION, int(time.time()), True, tuple(entries))
    python = Path(getattr(sys, "_base_executable", sys.executable))
    monkeypatch.setenv("VILLAGE_PROFILE_DIR", str(root / OPT / "profiles"))  # where a live box has them
    asyncio.run(install_slot(layout, manifest, python, box["config"]))  # type: ignore[arg-type]
    layout.switch("0.1.1", layout.current_version())
    assert (layout.current_version(), layout.previous_version()) == ("0.1.1", VERSION)
    notify: NotifyListener = box["notify"]  # type: ignore[assignment]
    proc = start_agent(box, tmp_path / "b.log")
    try:
        notify.wait_for("READY=1")
        collector.wait_for(lambda msgs: any(m.topic.endswith(f"/box/{BOX}/state") and m.json().get("version") == "0.1.1"
                                            for m in msgs))
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
