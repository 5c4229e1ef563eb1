"""county.toml: defaults, every kind of error as one line naming file and key, and `village county serve`
exiting 2 on a bad config or regions file (as a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from county.server.config import DEFAULT_DB_URL, ConfigError, load_config, masked, parse_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "county.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_are_safe() -> None:
    c = parse_config({})
    assert (c.server.host, c.server.port, c.server.tls) == ("127.0.0.1", 8080, False)
    assert c.database.url == DEFAULT_DB_URL == "sqlite:////var/lib/village-county/county.db"
    assert c.county.timezone == "Asia/Shanghai" and c.county.regions is None
    assert c.server.session_hours == 12 and c.server.login_max_failures == 5
    assert c.mqtt.urls == ("mqtt://127.0.0.1:1883",) and c.mqtt.topic_prefix == "vc/v1"
    assert c.review.daily is False and c.alarms.escalate_after_s == 300 and c.retention.telemetry_days == 90


def test_every_section_parses(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem", "county.key", "regions.toml", "mqtt.pw"):
        (tmp_path / name).write_text("x")
    p = write(tmp_path, """
[server]
listen = "0.0.0.0:8443"
tls_cert = "cert.pem"
tls_key = "key.pem"
session_hours = 8
[database]
url = "postgresql://county:s3cret@db.example/county"
[mqtt]
url = ["mqtts://a.example:8883", "mqtts://b.example:8883"]
ca = "ca.pem"
username = "county"
password_file = "mqtt.pw"
topic_prefix = "vc/v1"
client_id = "county-1"
[signing]
key = "county.key"
kid = "county-2026"
[county]
timezone = "Asia/Urumqi"
regions = "regions.toml"
[alarms]
escalate_after_s = 120
webhook = "https://sms.example/hook"
[retention]
telemetry_days = 30
[review]
daily = true
[log]
level = "debug"
""")
    c = load_config(p)
    assert c.server.tls and c.server.host == "0.0.0.0"
    assert c.server.tls_cert == tmp_path / "cert.pem"  # relative to the config file's directory
    assert c.county.regions == tmp_path / "regions.toml"
    assert c.mqtt.urls == ("mqtts://a.example:8883", "mqtts://b.example:8883")
    assert c.signing.kid == "county-2026" and c.review.daily
    shown = masked(c)
    assert "s3cret" not in repr(shown) and shown["database"]["url"] == "postgresql://county:***@db.example/county"


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[server]\nlisten = "0.0.0.0:8080"\n', "server.listen", "not a loopback address"),
    ('[server]\nlisten = "8080"\n', "server.listen", "is not host:port"),
    ('[server]\nlisten = "127.0.0.1:70000"\n', "server.listen", "port must be 1..65535"),
    ('[server]\nlisten = "::1:8080"\n', "server.listen", "in brackets"),
    ('[server]\ntls_cert = "/nonexistent.pem"\n', "server.tls_cert", "does not exist"),
    ('[server]\nlistne = "127.0.0.1:1"\n', "server.listne", "unknown key"),
    ('[sever]\n', "sever", "unknown key"),
    ('[database]\nurl = "mysql://u:pw@h/db"\n', "database.url", "is not sqlite:///PATH or postgresql"),
    ('[database]\nurl = "sqlite://relative.db"\n', "database.url", "sqlite:///PATH"),
    ('[database]\nurl = "postgresql+asyncpg://u:pw@h/db"\n', "database.url", "only postgresql:// (psycopg 3)"),
    ('[database]\nurl = "sqlite+pysqlite:////tmp/x.db"\n', "database.url", "sqlite:///PATH"),
    ('[mqtt]\nurl = "http://broker"\n', "mqtt.url", "scheme must be mqtt:// or mqtts://"),
    ('[mqtt]\nurl = []\n', "mqtt.url", "at least one"),
    ('[mqtt]\nurl = "mqtt://b:1883"\ntopic_prefix = "vc/#"\n', "mqtt.topic_prefix", "not a topic prefix"),
    ('[signing]\nkid = "k1"\n', "signing.key", "key and kid go together"),
    ('[signing]\nkid = "bad kid"\nkey = "/etc/hostname"\n', "signing.kid", "is not [A-Za-z0-9_-]"),
    ('[county]\ntimezone = "Mars/Olympus"\n', "county.timezone", "not an IANA time zone"),
    ('[county]\nregions = "/no/such/regions.toml"\n', "county.regions", "does not exist"),
    ('[alarms]\nescalate_after_s = 0\n', "alarms.escalate_after_s", "must be > 0"),
    ('[alarms]\nwebhook = "ftp://x"\n', "alarms.webhook", "not an http:// or https:// URL"),
    ('[review]\ndaily = "yes"\n', "review.daily", "expected true or false"),
    ('[server]\nsession_hours = -1\n', "server.session_hours", "must be > 0"),
    ('[mqtt]\ningest_workers = 0\n', "mqtt.ingest_workers", "must be 1..64 processes"),
])
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, key: str, problem: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{p}: {key}: "), line
    assert problem in line, line


def test_plain_http_off_loopback_needs_saying_so() -> None:
    c = parse_config({"server": {"listen": "0.0.0.0:8080", "allow_plain_http": True}})
    assert c.server.host == "0.0.0.0" and not c.server.tls
    assert parse_config({"server": {"listen": "[::1]:8080"}}).server.host == "::1"
    assert parse_config({"server": {"listen": "localhost:9000"}}).server.port == 9000


def test_tls_cert_without_key(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(ConfigError, match=r"server\.tls_key: tls_cert and tls_key go together"):
        load_config(write(tmp_path, '[server]\ntls_cert = "c.pem"\n'))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file does not exist"):
        load_config(tmp_path / "missing.toml")
    p = tmp_path / "bad.toml"
    p.write_bytes(b"[server]\nlisten = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"))


def test_password_in_a_bad_url_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[mqtt]\nurl = "mqtt://u:hunter22@host:99999"\n'))
    assert "hunter22" not in str(info.value) and "mqtt.url" in str(info.value)


def run_county(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "county", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_serve_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, '[server]\nlisten = "0.0.0.0:8080"\n')
    r = run_county("serve", "-c", str(p))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{p}: server.listen: " in lines[0] and "not a loopback address" in lines[0]


def test_serve_with_a_bad_regions_file_exits_2_with_one_line(tmp_path: Path) -> None:
    regions = write(tmp_path, '[county]\nid = "c"\nname = "县"\n[[township]]\nid = "t"\nname = "镇"\nextra = 1\n',
                    "regions.toml")
    p = write(tmp_path, f'[county]\nregions = "{regions.name}"\n[database]\nurl = "sqlite:///{tmp_path}/c.db"\n')
    r = run_county("serve", "-c", str(p))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{regions}: township[0].extra: unknown key" in lines[0], r.stderr
    assert not (tmp_path / "c.db").exists()  # nothing opened before the config was whole


def test_serve_with_an_unusable_signing_key_exits_2(tmp_path: Path) -> None:
    (tmp_path / "county.key").write_text("not a PEM key")
    p = write(tmp_path, '[signing]\nkey = "county.key"\nkid = "county-2026"\n'
                        f'[database]\nurl = "sqlite:///{tmp_path}/c.db"\n')
    r = run_county("serve", "-c", str(p))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{p}: signing.key: " in lines[0] and "PEM" in lines[0], r.stderr


def test_ingest_workers_reach_the_ingest_that_serve_builds() -> None:
    from county.regions import Regions
    from county.server.cli import _ingest

    assert parse_config({}).mqtt.ingest_workers == 1
    one = _ingest(parse_config({}), None, None, Regions.empty())
    two = _ingest(parse_config({"mqtt": {"ingest_workers": 2}}), None, None, Regions.empty())
    assert one.workers is None and two.workers is not None and two.cfg.workers == 2
