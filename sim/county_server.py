"""The county server beside a simulated village: `village sim run --county` (default on when the [county]
extra is installed).

`village county serve` runs as a child process with a county.toml, a regions file and a sqlite database
written into the run's directory (`--workdir` keeps them), on a free loopback port, against the run's
broker, signing with the run's county key (the one the simulated box trusts). One admin login is created
with a random password; the URL and the login are printed when the server answers GET /api/v1/health.
The regions file puts the scenario's box in one village named after the scenario, in a township named after
the box's first group, in a county `sim-county` (模拟县).

The server needs MQTT 5 shared subscriptions: with the embedded amqtt broker (MQTT 3.1.1 only) it is not
started, and the run says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.protocol.topics import BOX_ID_RE
from sim.broker import listens

USER = "demo"
COUNTY_MODULES = ("sqlalchemy", "aiosqlite", "alembic", "starlette", "uvicorn", "argon2", "openpyxl")


def county_installed() -> bool:
    """Whether the [county] extra's packages are importable."""
    return all(importlib.util.find_spec(m) is not None for m in COUNTY_MODULES)


class PortTaken(RuntimeError):
    """Another process answered on the port this server was given (it was free when picked)."""

    def __init__(self, port: int) -> None:
        super().__init__(f"another process listens on 127.0.0.1:{port}, the port the county server was given")


def _somebody_listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _id(text: str, fallback: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.encode("ascii", "ignore").decode())[:64]
    return cleaned if cleaned and BOX_ID_RE.match(cleaned) else fallback


def _toml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string or list of strings is a TOML one


def regions_toml(scenario_name: str, description: str, box: str, groups: tuple[str, ...]) -> str:
    village = _id(scenario_name, "sim-village")
    township = _id(groups[0], "sim-town") if groups else "sim-town"
    if township == village:
        township += "-town"
    vname = (description.split(":", 1)[0].strip() or scenario_name)[:100]
    return "\n".join([
        "[county]", 'id = "sim-county"', 'name = "模拟县"', "",
        "[[township]]", f"id = {_toml(township)}", f"name = {_toml(township)}", "",
        "[[township.village]]", f"id = {_toml(village)}", f"name = {_toml(vname)}", "",
        "[[township.village.box]]", f"id = {_toml(box)}", f"name = {_toml(box)}", f"groups = {_toml(list(groups))}",
        ""])


@dataclass
class CountyServer:
    workdir: Path
    broker_url: str
    key_path: Path
    kid: str
    scenario_name: str
    description: str
    box: str
    groups: tuple[str, ...]
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.dir = self.workdir / "county"
        self.port = 0
        self.password = secrets.token_urlsafe(12)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.dir / "county.toml"

    @property
    def log_path(self) -> Path:
        return self.dir / "county-server.log"

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agent.cli", "county", *args]

    def start(self, attempts: int = 3) -> CountyServer:
        """Write the files, create the login, start the server; returns once /api/v1/health answers (on a
        new port if another process answered on this one). RuntimeError (or OSError) says what failed."""
        for _attempt in range(attempts - 1):
            try:
                return self._start_once()
            except PortTaken:
                continue
        return self._start_once()

    def _start_once(self) -> CountyServer:
        try:
            return self._start()
        except subprocess.SubprocessError as exc:
            self.stop()
            raise RuntimeError(str(exc)) from exc

    def _start(self) -> CountyServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        (self.dir / "regions.toml").write_text(
            regions_toml(self.scenario_name, self.description, self.box, self.groups), encoding="utf-8")
        self.config.write_text("\n".join([
            "[server]", f'listen = "127.0.0.1:{self.port}"', "",
            "[database]", f"url = {_toml('sqlite:///' + str((self.dir / 'county.db').resolve()))}", "",
            "[mqtt]", f"url = {_toml(self.broker_url)}", f'client_id = "village-sim-county-{self.port}"', "",
            "[signing]", f"key = {_toml(str(self.key_path.resolve()))}", f"kid = {_toml(self.kid)}", "",
            "[county]", 'timezone = "Asia/Shanghai"', 'regions = "regions.toml"', ""]), encoding="utf-8")
        pw = self.dir / "demo.password"
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        base = ["user", "add", USER, "--role", "admin", "--password-file", str(pw), "--display-name", "演示"]
        add = subprocess.run(self._cli(*base, "-c", str(self.config)), capture_output=True, text=True, timeout=120)
        if add.returncode != 0:  # a kept --workdir: the user is there, give it the new password
            add = subprocess.run(self._cli(*base, "--update", "-c", str(self.config)), capture_output=True,
                                 text=True, timeout=120)
        if add.returncode != 0:
            raise RuntimeError(f"county user add failed: {(add.stderr or add.stdout).strip()[-300:]}")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self._cli("serve", "-c", str(self.config)), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                if _somebody_listens(self.port):  # it could not bind: the port was taken after it was picked
                    self.stop()
                    raise PortTaken(self.port)
                raise RuntimeError(f"county server exited {self.proc.returncode}: {self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        if listens(self.proc.pid, self.port) is False:  # another's server on a reused port
                            self.stop()
                            raise PortTaken(self.port)
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"county server did not answer within {self.start_timeout_s:g} s: {self._tail()}")
            time.sleep(0.2)  # polling the health route (a condition), not waiting for time to pass

    def settle(self, box: str, seq: int | None, timeout_s: float = 15.0) -> bool:
        """Until the server has stored envelope `seq` of `box` (what the run's county view saw last), so
        stopping it loses nothing it was about to commit; False after `timeout_s`."""
        if seq is None or self.proc is None:
            return True
        token = self._login()
        deadline = time.monotonic() + timeout_s
        while True:
            req = urllib.request.Request(f"{self.url}/api/v1/messages?box={box}&since_seq={seq - 1}&limit=1",
                                         headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if json.loads(r.read()):
                        return True
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.1)  # polling a condition (the row is there), not waiting for time to pass

    def _login(self) -> str:
        body = json.dumps({"username": USER, "password": self.password}).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/session", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(json.loads(r.read())["token"])

    def _tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def banner(self) -> str:
        """Two lines (the first, what a technician needs, fits an 80-column dashboard), in the chosen language."""
        from agent.i18n import _

        return "\n".join((
            _("county server: {url}  login {user} / {password}").format(url=self.url, user=USER,
                                                                         password=self.password),
            _("county server: database {db}, log {log}").format(db=self.dir / "county.db", log=self.log_path)))
