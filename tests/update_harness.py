"""Real boxes for the update tests: a release root in a temp dir, the project's own launcher, a restart loop.

- `Bundles`: the project built as wheels once per session (A, B with a bumped version, B with a deliberate
  import error), dependency wheels repacked once from this interpreter's environment, signed manifests.
- `ReleaseServer`: a real HTTPS server (TLS, client certificate required, Range requests) serving bundles,
  counting the body bytes it sent; it can hold a download after N bytes so a test can kill the box there.
- `Box`: a release root provisioned with A the way install-box does (slot, `current`, wheel store), run by
  `RestartLoop`, which plays systemd: it runs systemd/village-launch, starts it again whenever it exits
  (Restart=always), and for exit 2 first runs `village-launch --rollback` (OnFailure=). kill -9 of the whole
  process tree is os.killpg on the launcher's session.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.keys import load_private_key, new_keypair
from agent.profile import PROFILE_DIR_ENV
from agent.protocol import jws
from agent.protocol.topics import Topics
from agent.release import (
    MANIFEST_FILE,
    WHEELS_DIR,
    Manifest,
    WheelEntry,
    build_project_wheel,
    dependency_closure,
    python_tag,
    repack_distribution,
    schema_versions,
    sha256_file,
    sign_manifest,
)
from agent.update.install import install_slot
from agent.update.layout import Layout
from tests.pki import TestCA
from tests.support import Collector, Mosquitto, toml_dumps, wait_until

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "systemd" / "village-launch"
PROFILES = REPO / "firmware_cfg"
BASE_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))
A, B, BROKEN = "1.0.0", "1.0.1", "1.0.2"


@dataclass
class Bundle:
    dir: Path
    manifest: Manifest
    name: str

    @property
    def digest(self) -> str:
        return sha256_file(self.dir / MANIFEST_FILE)


class Bundles:
    """Everything built once, in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self._made = 0
        self.rel_key_path, self.rel_pub = new_keypair("release-test", self.keys)
        self.cmd_key_path, self.cmd_pub = new_keypair("county-test", self.keys)
        self.rogue_key_path, _ = new_keypair("rogue", self.keys)
        self.rel_key = load_private_key(self.rel_key_path)
        self.cmd_key = load_private_key(self.cmd_key_path)
        deps = root / "deps"
        self.deps = [repack_distribution(d, deps) for d in dependency_closure()]
        self.project: dict[str, Path] = {}

    def project_wheel(self, version: str) -> Path:
        """The project built as `version` (once; BROKEN with an import error `agent run` hits, `check` not)."""
        if version in self.project:
            return self.project[version]
        source = REPO
        if version == BROKEN:
            source = self.root / "broken-src"
            source.mkdir()
            for part in ("pyproject.toml", "README.md", "agent", "drivers", "sim", "county", "firmware_cfg"):
                src = REPO / part
                if src.is_dir():
                    shutil.copytree(src, source / part, ignore=shutil.ignore_patterns("__pycache__"))
                elif src.exists():
                    shutil.copy2(src, source / part)
            app = source / "agent" / "app.py"
            app.write_text(app.read_text() + "\nimport village_edge_deliberately_missing_module  # noqa\n")
        self.project[version] = build_project_wheel(source, self.root / "project" / version, version)
        return self.project[version]

    def bundle(self, name: str, version: str, *, arch: str = "any", min_from: str = "0", key: Any = None,
               kid: str = "release-test", with_deps: bool = True, schemas: dict[str, int] | None = None) -> Bundle:
        self._made += 1
        out = self.root / "bundles" / f"{self._made}-{name}"
        wheels = out / WHEELS_DIR
        wheels.mkdir(parents=True)
        files = [Path(shutil.copy2(self.project_wheel(version), wheels))]
        if with_deps:
            files += [Path(shutil.copy2(d, wheels)) for d in self.deps]
        entries = tuple(WheelEntry(f.name, sha256_file(f), f.stat().st_size, i == 0) for i, f in enumerate(files))
        manifest = Manifest("village-edge", version, python_tag(), arch, min_from, int(time.time()), with_deps,
                            entries, tuple(sorted((schemas if schemas is not None else schema_versions()).items())))
        (out / MANIFEST_FILE).write_text(sign_manifest(manifest, key or self.rel_key, kid))
        return Bundle(out, manifest, name)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = (srv.docroot / self.path.lstrip("/")).resolve()
        if not path.is_file() or srv.docroot.resolve() not in path.parents:
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((self.path, rng))
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        pos = start
        while pos < len(data):
            hold = srv.hold_after
            if hold is not None and srv.sent >= hold and path.name.endswith(".whl"):
                srv.holding.set()
                if srv.release.wait(0.1):
                    continue
                continue
            chunk = data[pos:pos + 4096]
            try:
                self.wfile.write(chunk)
            except OSError:
                return
            pos += len(chunk)
            with srv.lock:
                srv.sent += len(chunk)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    docroot: Path
    lock: threading.Lock
    requests: list[tuple[str, str | None]]
    sent: int
    hold_after: int | None
    holding: threading.Event
    release: threading.Event


class ReleaseServer:
    """HTTPS on 127.0.0.1 with a certificate for `localhost`; clients must present one of `ca`'s certificates."""

    def __init__(self, docroot: Path, ca: TestCA) -> None:
        self.docroot = docroot
        docroot.mkdir(parents=True, exist_ok=True)
        issued = ca.server("localhost")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(issued.cert), str(issued.key))
        ctx.load_verify_locations(str(ca.pem))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.docroot = docroot
        self.httpd.lock = threading.Lock()
        self.httpd.requests = []
        self.httpd.sent = 0
        self.httpd.hold_after = None
        self.httpd.holding = threading.Event()
        self.httpd.release = threading.Event()
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}/"

    def publish(self, bundle: Bundle, name: str | None = None) -> str:
        """Copy a bundle under releases/<name>/; returns the manifest URL."""
        name = name or bundle.name
        dest = self.docroot / "releases" / name
        shutil.copytree(bundle.dir, dest)
        return f"{self.base}releases/{name}/{MANIFEST_FILE}"

    @property
    def sent(self) -> int:
        with self.httpd.lock:
            return self.httpd.sent

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        with self.httpd.lock:
            return list(self.httpd.requests)

    def hold(self, after: int | None) -> None:
        self.httpd.release.clear()
        self.httpd.holding.clear()
        self.httpd.hold_after = None if after is None else self.sent + after

    def unhold(self) -> None:
        self.httpd.hold_after = None
        self.httpd.release.set()

    def close(self) -> None:
        self.unhold()
        self.httpd.shutdown()
        self.httpd.server_close()


def provision_template(bundles: Bundles, dest: Path) -> Path:
    """A release root with A installed as install-box would: slot, `current`, the wheel store, the launcher."""
    a = bundles.bundle("provision-A", A)
    layout = Layout(dest)
    layout.ensure()
    for w in a.manifest.wheels:
        shutil.copy2(a.dir / WHEELS_DIR / w.file, layout.wheel(w.sha256))
    cfg = dest / "check.toml"
    cfg.write_text(toml_dumps({"box": {"id": "template", "profile": "sim", "state_dir": str(dest / "st")},
                               "mqtt": {"url": "mqtt://127.0.0.1:1"}}))
    # the profiles ship beside the slots (install-box: /opt/village-agent/profiles), not in the wheel
    old = os.environ.get(PROFILE_DIR_ENV)
    os.environ[PROFILE_DIR_ENV] = str(PROFILES)
    try:
        asyncio.run(install_slot(layout, a.manifest, BASE_PYTHON, cfg))
    finally:
        if old is None:
            os.environ.pop(PROFILE_DIR_ENV, None)
        else:
            os.environ[PROFILE_DIR_ENV] = old
    layout.switch(A, None)
    (dest / "bin").mkdir(exist_ok=True)
    shutil.copy2(LAUNCHER, dest / "bin" / "village-launch")
    cfg.unlink()
    shutil.rmtree(dest / "st", ignore_errors=True)
    return dest


class RestartLoop:
    """systemd for one unit: Restart=always (RestartSec `delay`), OnFailure= for exit 2."""

    def __init__(self, root: Path, config: Path, log: Path, env: dict[str, str], delay: float = 0.2) -> None:
        self.root, self.config, self.log, self.env, self.delay = root, config, log, env, delay
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []
        self.starts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> RestartLoop:
        self.thread.start()
        return self

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            return subprocess.Popen(["sh", str(self.root / "bin" / "village-launch"), *args], stdout=log,
                                    stderr=log, start_new_session=True,
                                    env={**os.environ, **self.env, "VILLAGE_ROOT": str(self.root)})

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self.starts += 1
                with open(self.log, "ab") as log:
                    log.write(f"--- start {self.starts} ---\n".encode())
                self.proc = self._spawn("-c", str(self.config))
            code = self.proc.wait()
            self.exits.append(code)
            if code == 2 and not self._stop.is_set():
                self._spawn("--rollback").wait()
            self._stop.wait(self.delay)

    def kill_tree(self) -> None:
        """kill -9 of the whole process tree (a power cut, as far as the processes are concerned)."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.thread.join(20)


class Box:
    def __init__(self, workdir: Path, template: Path, bundles: Bundles, ca: TestCA, broker_url: str,
                 server: ReleaseServer | None, box_id: str = "box-1", **update: Any) -> None:
        self.workdir, self.bundles, self.box_id = workdir, bundles, box_id
        workdir.mkdir(parents=True, exist_ok=True)
        self.root = workdir / "root"
        subprocess.run(["cp", "-a", str(template), str(self.root)], check=True)
        self.layout = Layout(self.root)
        ident = ca.client(box_id)
        self.state = workdir / "state"
        self.config_path = workdir / "agent.toml"
        settings = {"root": str(self.root), "python": str(BASE_PYTHON), "health_timeout_s": 60.0,
                    "healthy_after_s": 1.0, "max_rate_bytes_s": 50_000_000, "min_free_mb": 1, **update}
        if server is not None:
            settings["server"] = server.base
        self.raw: dict[str, Any] = {
            "box": {"id": box_id, "groups": ["town-test"], "profile": "sim", "state_dir": str(self.state),
                    "heartbeat_s": 3600},
            "mqtt": {"url": broker_url, "backoff_min_s": 0.05, "backoff_max_s": 0.3, "connect_timeout_s": 3,
                     "ca": str(ca.pem), "cert": str(ident.cert), "key": str(ident.key)},
            "trust": {"keys": {"county-test": str(bundles.cmd_pub)},
                      "release_keys": {"release-test": str(bundles.rel_pub)}},
            "update": settings,
        }
        self.config_path.write_text(toml_dumps(self.raw))
        self.log = workdir / "box.log"
        self.loop = RestartLoop(self.root, self.config_path, self.log, {"PYTHONUNBUFFERED": "1",
                                                                           PROFILE_DIR_ENV: str(PROFILES)})
        self.topic = Topics("vc/v1").box_cmd(box_id)
        self.last_token = ""

    def start(self) -> Box:
        self.loop.start()
        self.wait_connected()
        return self

    def connected(self) -> bool:
        try:
            return json.loads((self.state / "link.json").read_text()).get("state") == "connected"
        except (OSError, ValueError):
            return False

    def wait_connected(self, timeout: float = 60.0) -> None:
        try:
            wait_until(self.connected, timeout)
        except (TimeoutError, AssertionError):
            raise AssertionError(f"box never connected:\n{self.log_text()[-3000:]}") from None

    def stop(self) -> None:
        self.loop.stop()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def command(self, collector: Collector, kind: str, data: dict[str, Any]) -> str:
        now = int(time.time())
        cmd_id = f"{kind}-{uuid.uuid4().hex[:12]}"
        payload = {"v": 1, "id": cmd_id, "kind": kind, "iat": now, "exp": now + 3600, "to": [f"box:{self.box_id}"],
                   "data": data}
        self.last_token = jws.sign(payload, self.bundles.cmd_key, "county-test")
        self.wait_subscribed(collector)
        collector.publish(self.topic, self.last_token)
        return cmd_id

    def wait_subscribed(self, collector: Collector, timeout: float = 60.0) -> None:
        """Until the broker holds the box's command subscription: link.json says "connected" once SUBSCRIBE is
        sent, and a command published before the broker has taken it goes to nobody. The box's `online` state
        goes out after the SUBSCRIBE on the same connection, and the subscription lives on in the box's
        session across restarts, so one `online` seen by the county (vc/v1/#) is enough."""
        state = Topics("vc/v1").state(self.box_id)

        def online() -> bool:
            return any(m.topic == state and json.loads(m.payload).get("state") == "online"
                       for m in collector.snapshot())
        try:
            wait_until(online, timeout)
        except TimeoutError:
            raise AssertionError(f"the county never saw {self.box_id} online:\n{self.log_text()[-3000:]}") from None

    def update(self, collector: Collector, url: str, bundle: Bundle) -> str:
        return self.command(collector, "agent.update", {"version": bundle.manifest.version,
                                                        "manifest_sha256": bundle.digest, "url": url})


def receipts(collector: Collector, cmd_id: str) -> list[dict[str, Any]]:
    out = []
    for env in collector.envelopes():
        if env.get("class") == "receipt" and isinstance(env.get("data"), dict) and env["data"].get("cmd") == cmd_id:
            out.append(env["data"])
    return out


def wait_receipt(collector: Collector, box: Box, cmd_id: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((r for r in receipts(collector, cmd_id) if all(r.get(k) == v for k, v in fields.items())), None)
    try:
        return wait_until(find, timeout)
    except (TimeoutError, AssertionError):
        raise AssertionError(f"no receipt {fields} for {cmd_id}; got {receipts(collector, cmd_id)}\n"
                             f"{box.log_text()[-4000:]}") from None


def running_version(collector: Collector, box: Box, timeout: float = 60.0) -> str:
    """Ask the box: a config.set that changes nothing answers `applied step=unchanged` with its version."""
    cmd = box.command(collector, "config.set", {"toml": "[log]\nlevel = \"info\"\n"})
    r = wait_receipt(collector, box, cmd, timeout, state="applied")
    return str(r.get("version"))


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)


# ------------------------------------------------------------------------- fixtures (imported by the tests)
# Built once per pytest process whichever test module asks first (imported fixtures are per module).
_CACHE: dict[str, Any] = {}


@pytest.fixture(scope="session", name="bundles")
def fixture_bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    if "bundles" not in _CACHE:
        _CACHE["bundles"] = Bundles(tmp_path_factory.mktemp("bundles"))
    return _CACHE["bundles"]


@pytest.fixture(scope="session", name="template")
def fixture_template(bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "template" not in _CACHE:
        _CACHE["template"] = provision_template(bundles, tmp_path_factory.mktemp("template") / "root")
    return _CACHE["template"]


@pytest.fixture(scope="session", name="ca")
def fixture_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    if "ca" not in _CACHE:
        _CACHE["ca"] = TestCA(tmp_path_factory.mktemp("ca"))
    return _CACHE["ca"]


@pytest.fixture(name="server")
def fixture_server(tmp_path: Path, ca: TestCA) -> Iterator[ReleaseServer]:
    s = ReleaseServer(tmp_path / "www", ca)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(name="county")
def fixture_county(broker: Mosquitto) -> Iterator[Collector]:
    c = Collector(broker.url, client_id="county-test").start()  # a persistent session: nothing missed
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(name="make_box")
def fixture_make_box(tmp_path: Path, template: Path, bundles: Bundles, ca: TestCA, broker: Mosquitto,
             server: ReleaseServer) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []

    def make(**update: Any) -> Box:
        box = Box(tmp_path / f"box{len(boxes)}", template, bundles, ca, broker.url, server, **update)
        boxes.append(box)
        return box.start()

    yield make
    for box in boxes:
        box.stop()
