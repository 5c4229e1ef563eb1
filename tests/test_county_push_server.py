"""`village county push|cancel --server URL`: the console logs in to the county server, which signs and publishes.

A real `village county serve` (subprocess) over SQLite with its own ingest, a real mosquitto, a fake box
(tests/test_county_cli.py's FakeBox: verifies the signature with the county's public key and answers with
receipts, which the server ingests), and the console as a subprocess: the id is printed, the box gets a
verifiable command with the options given, --wait prints the per-box table of the local mode and exits 0;
a wrong password, a viewer, a group nobody answers to are one line and their exit codes; https with --ca.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.keys import new_keypair
from tests.pki import TestCA
from tests.support import Mosquitto, county_serve, county_user_add, free_port, wait_port, wait_until
from tests.test_county_cli import FakeBox
from tests.test_county_serve import box_state

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
BOX = "lhk-menglou-001"  # in county/regions.example.toml, groups town-menglou


@dataclass
class Server:
    url: str
    tmp: Path
    proc: subprocess.Popen[str]
    public_key: Path
    ca: Path | None = None

    def console(self, *args: str, password: str | None = None, env: dict[str, str] | None = None,
                timeout: float = 90) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k not in ("VILLAGE_COUNTY_PASSWORD", "VILLAGE_TZ")}
        environ.update(env or {})
        extra: list[str] = []
        if password is not None:
            pw = self.tmp / f"pw-{abs(hash(password))}"
            pw.write_text(password + "\n")
            extra = ["--password-file", str(pw)]
        if self.ca is not None:
            extra += ["--ca", str(self.ca)]
        return subprocess.run([sys.executable, "-m", "agent.cli", "county", *args, "--server", self.url, *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout, env=environ)


def _user(cfg: Path, pw: Path, name: str, role: str) -> None:
    county_user_add(cfg, name, role, pw)


def start_server(tmp: Path, broker: Mosquitto, *, tls: bool = False) -> Server:
    key, pub = new_keypair("county-2026", tmp / "keys")
    port = free_port()
    server, ca_pem = "", None
    if tls:
        ca = TestCA(tmp / "ca")
        issued = ca.server("localhost")
        server, ca_pem = f'tls_cert = "{issued.cert}"\ntls_key = "{issued.key}"', ca.pem
    cfg = tmp / "county.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
{server}
[database]
url = "sqlite:///{tmp}/county.db"
[mqtt]
url = "{broker.url}"
client_id = "push-server-test"
[signing]
key = "{key}"
kid = "county-2026"
[county]
timezone = "Asia/Shanghai"
regions = "{REPO / 'county/regions.example.toml'}"
""", encoding="utf-8")
    pw = tmp / "pw-users"
    pw.write_text(PASSWORD + "\n")
    _user(cfg, pw, "li", "operator")
    _user(cfg, pw, "wang", "viewer")
    proc = county_serve(cfg)
    wait_port(port, timeout=30)
    host = "localhost" if tls else "127.0.0.1"
    return Server(f"{'https' if tls else 'http'}://{host}:{port}", tmp, proc, pub, ca_pem)


def stop_server(s: Server) -> None:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = s.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            _out, err = s.proc.communicate()
        assert s.proc.returncode == 0, err
        assert PASSWORD not in err


@pytest.fixture
def server(tmp_path: Path, broker: Mosquitto) -> Iterator[Server]:
    s = start_server(tmp_path, broker)
    try:
        yield s
    finally:
        stop_server(s)


@pytest.fixture
def box(server: Server, broker: Mosquitto) -> Iterator[FakeBox]:
    b = FakeBox(broker.url, BOX, ["town-menglou"], server.public_key, answer=("received", "finished"))
    try:  # the server knows the box (its retained state, ingested) before anything targets it
        assert wait_until(lambda: box_state(server.tmp / "county.db", BOX) == "online", timeout=30)
        yield b
    finally:
        b.stop()


def test_push_through_the_server_signs_sends_and_waits_for_the_board(server: Server, box: FakeBox) -> None:
    r = server.console("push", "--user", "li", "--to", "group:town-menglou", "--text", "明天上午9点停水",
                       "--title", "停水通知", "--at", "+1h", "--until", "2099-01-01T08:00", "--volume", "60",
                       "--ttl", "2h", "--wait", "60", password=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    announced = [ln for ln in r.stderr.splitlines() if ln.startswith("village county push: broadcast ")]
    assert len(announced) == 1 and f"sent: 1 box(es): {BOX}" in announced[0], r.stderr
    bid = announced[0].split()[4]
    assert "every box reached a final state" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["BOX", "STATE", "REASON", "AT"]
    assert [ln.split()[:2] for ln in lines[1:]] == [[BOX, "finished"]]
    # the box got the command the server signed with the county key (FakeBox verified it), with our options
    got = [p for _t, p, _r in box.got if p["id"] == bid]
    assert len(got) == 1
    cmd = got[0]
    assert cmd["kind"] == "broadcast.play" and cmd["to"] == ["group:town-menglou"]
    assert cmd["exp"] - cmd["iat"] == 7200
    data = cmd["data"]
    assert data["text"] == "明天上午9点停水" and data["title"] == "停水通知" and data["volume"] == 60
    assert data["class"] == "daily" and data["level"] == 3
    assert cmd["iat"] + 3590 <= data["start"] <= cmd["iat"] + 3610
    # an ISO time without an offset is the county's (Asia/Shanghai), whatever the console machine's zone
    assert data["end"] == int(dt.datetime(2099, 1, 1, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())

    # inline audio: audio_b64 + mime, the --spoken transcript as the text
    wav = server.tmp / "notice.wav"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    r = server.console("push", "--user", "li", "--to", f"box:{BOX}", "--audio", str(wav), "--spoken", "通知",
                       "--class", "emergency", password=PASSWORD)
    assert r.returncode == 0, r.stderr
    aid = r.stdout.split()[1]
    assert wait_until(lambda: [p for _t, p, _r in box.got if p["id"] == aid], timeout=20)
    played = next(p for _t, p, _r in box.got if p["id"] == aid)["data"]
    assert played["audio"]["mime"] == "audio/wav" and base64.b64decode(played["audio"]["b64"]) == wav.read_bytes()
    assert played["audio"]["sha256"] == hashlib.sha256(wav.read_bytes()).hexdigest()
    assert played["text"] == "通知" and played["class"] == "emergency" and played["level"] == 1

    # without --wait: the id and state on stdout (JSON with --json); then cancel it through the server
    r = server.console("push", "--user", "li", "--to", f"box:{BOX}", "--text", "hi", "--json",
                       env={"VILLAGE_COUNTY_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["state"] == "sent" and out["boxes"] == [BOX]
    assert wait_until(lambda: any(p["id"] == out["id"] for _t, p, _r in box.got), timeout=20)
    r = server.console("cancel", out["id"], "--user", "li", password=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"broadcast {out['id']} cancelled (broadcast.cancel ")
    assert wait_until(lambda: [p for _t, p, _r in box.got if p["kind"] == "broadcast.cancel"], timeout=20)
    cancel = next(p for _t, p, _r in box.got if p["kind"] == "broadcast.cancel")
    assert cancel["data"] == {"broadcast": out["id"]} and cancel["to"] == [f"box:{BOX}"]


def test_refusals_are_one_line_with_the_console_exit_codes(server: Server, box: FakeBox, peers: Path) -> None:
    sent_before = len(box.got)
    r = server.console("push", "--user", "li", "--to", "group:town-menglou", "--text", "x",
                       password="not the password")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"village county push: login as 'li' at {server.url} failed: wrong user name or password"]
    assert "not the password" not in r.stderr

    r = server.console("push", "--user", "wang", "--to", "group:town-menglou", "--text", "x", password=PASSWORD)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "403 forbidden" in lines[0] and "broadcast.create" in lines[0], r.stderr

    r = server.console("push", "--user", "li", "--to", "group:no-such-town", "--text", "x", password=PASSWORD)
    assert r.returncode == 4, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "no known box answers to group:no-such-town" in lines[0]

    r = server.console("push", "--user", "li", "--to", f"box:{BOX}", "--text", "x", "--at", "2020-01-01T08:00",
                       password=PASSWORD)
    assert r.returncode == 2 and "--at 2020-01-01T08:00 is" in r.stderr and "ago; nothing sent" in r.stderr

    r = server.console("push", "--user", "li", "--to", f"box:{BOX}", "--text", "x")  # no password anywhere
    assert r.returncode == 1
    assert r.stderr.splitlines() == ["village county push: --server needs a password: --password-file F or "
                                     "$VILLAGE_COUNTY_PASSWORD"]
    # --force past nobody_hears: sent; a box that never answers is `no answer` in the table, exit 3
    r = server.console("push", "--user", "li", "--to", "box:ghost-9", "--text", "x", "--force", "--wait", "1",
                       "--json", password=PASSWORD)
    assert r.returncode == 3, r.stderr
    assert [json.loads(ln)["state"] for ln in r.stdout.splitlines()] == ["no answer"]
    # a CAP Update names earlier broadcasts by CAP identifier, which the server does not know
    r = server.console("push", "--user", "li", "--to", f"box:{BOX}", "--cap", str(peers / "cap-1.2-A3-update.xml"),
                       password=PASSWORD)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "CAP Update or Cancel" in r.stderr
    r = server.console("cancel", "nope", "--user", "li", password=PASSWORD)
    assert r.returncode == 1 and "404 not_found: no such broadcast" in r.stderr
    assert len(box.got) == sent_before  # none of these reached the box


def test_the_same_refusals_in_chinese_with_the_same_exit_codes(server: Server, box: FakeBox, peers: Path) -> None:
    """The server's refusals through the console in Chinese: the frame in words, the codes as they are, the
    server's own detail in words when it is a sentence of the catalog, one line, the exit code of the English run."""
    sent_before = len(box.got)
    cases = [
        (["push", "--user", "li", "--to", "group:town-menglou", "--text", "x"], "not the password", 1,
         "以 'li' 登录"),
        (["push", "--user", "wang", "--to", "group:town-menglou", "--text", "x"], PASSWORD, 1,
         "县级服务器回答 403 forbidden："),
        (["push", "--user", "li", "--to", "group:no-such-town", "--text", "x"], PASSWORD, 4,
         "县级服务器回答 422 unprocessable, 没有盒子对应这个目标 (nobody_hears)："),
        (["push", "--user", "li", "--to", f"box:{BOX}", "--text", "x", "--at", "2020-01-01T08:00"], PASSWORD, 2,
         "没有发送"),
        (["push", "--user", "li", "--to", f"box:{BOX}", "--cap", str(peers / "cap-1.2-A3-update.xml")], PASSWORD, 2,
         "CAP 的 Update 或 Cancel"),
        (["cancel", "nope", "--user", "li"], PASSWORD, 1, "县级服务器回答 404 not_found：没有这条广播"),
    ]
    for args, password, code, phrase in cases:
        r = server.console(*args, "--lang", "zh", password=password)
        lines = r.stderr.splitlines()
        assert r.returncode == code and len(lines) == 1 and phrase in lines[0], (args, r.returncode, r.stderr)
    assert len(box.got) == sent_before


def test_signing_mode_is_either_server_or_key_and_kid(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "county", "push", "--to", "box:b", "--text", "x",
                               *args], cwd=REPO, capture_output=True, text=True, timeout=60)

    r = run()
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "village county push: give --key FILE and --kid ID (sign here) or --server URL --user NAME "
        "(the county server signs)"]
    r = run("--server", "http://127.0.0.1:9", "--user", "li", "--key", str(tmp_path / "k"), "--kid", "x")
    assert r.returncode == 2 and "not both" in r.stderr
    r = run("--server", "http://127.0.0.1:9")
    assert r.returncode == 2 and "--server needs --user NAME" in r.stderr
    r = run("--key", str(tmp_path / "k"))
    assert r.returncode == 2 and "give --key FILE and --kid ID" in r.stderr
    r = run("--server", "http://127.0.0.1:9", "--user", "li", "--id", "x")
    assert r.returncode == 2 and "--id: the county server names its broadcasts" in r.stderr


def test_push_over_https_with_ca(tmp_path: Path, broker: Mosquitto) -> None:
    s = start_server(tmp_path, broker, tls=True)
    b = FakeBox(broker.url, BOX, ["town-menglou"], s.public_key, answer=("received", "finished"))
    try:
        assert wait_until(lambda: box_state(tmp_path / "county.db", BOX) == "online", timeout=30)
        r = s.console("push", "--user", "li", "--to", f"box:{BOX}", "--text", "tls", "--wait", "60",
                      password=PASSWORD)
        assert r.returncode == 0, r.stderr
        assert [ln.split()[:2] for ln in r.stdout.splitlines()[1:]] == [[BOX, "finished"]]
        s.ca = None  # without the CA the server's certificate is not trusted: one line, exit 1
        r = s.console("push", "--user", "li", "--to", f"box:{BOX}", "--text", "tls", password=PASSWORD)
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "cannot reach" in r.stderr, r.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in r.stderr or "certificate verify failed" in r.stderr
    finally:
        b.stop()
        stop_server(s)


def test_a_password_in_the_server_url_is_refused_and_not_shown(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "agent.cli", "county", "push", "--to", "box:b", "--text", "x",
                        "--server", "http://li:s3cret-pw@127.0.0.1:9", "--user", "li"],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "VILLAGE_COUNTY_PASSWORD": "s3cret-pw"})
    assert r.returncode == 1 and "s3cret-pw" not in r.stdout + r.stderr
    assert r.stderr.splitlines() == ["village county push: --server URL carries a user or password: give --user "
                                     "and --password-file instead"]
