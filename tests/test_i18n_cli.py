"""The CLI's error paths that have tests in English (test_keys, test_agent_process, test_operations, test_sim_run,
test_county_cli, test_county_server_*) replayed in Chinese: the same exit code, still one line on stderr, and
the line in Chinese (its fixed words from the catalog; file names, ids and codes stay as they are). English
stays English. Run in-process through `village`'s own main, as a shell would call it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import i18n
from agent.cli import main
from agent.keys import new_keypair
from tests.conftest import REPO
from tests.support import Mosquitto

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(autouse=True)
def back_to_english() -> Iterator[None]:
    yield
    i18n.set_lang("en")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    key, pub = new_keypair("county-2026", tmp_path / "keys")
    (tmp_path / "bad.toml").write_text("x = [\n")
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    (tmp_path / "existing").mkdir()
    new_keypair("taken", tmp_path / "existing")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[box]\nid = "b1"\nprofile = "sim"\nstate_dir = "{tmp_path / "never-ran"}"\n'
                   '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    (tmp_path / "unknown-wearer.toml").write_text('[scenario]\nname = "x"\n[[wearer]]\nid = "W1"\ndevice = "1"\n'
                                                  'path = [[21.95, 101.25]]\n[[at]]\nt_s = 5\ndo = "sos"\n'
                                                  'wearer = "W9"\n')
    (tmp_path / "big.mp3").write_bytes(b"\0" * (2 * 1024 * 1024 + 1))
    (tmp_path / "pw.txt").write_text("not-the-password\n")
    box = '[box]\nid = "{id}"\nprofile = "sim"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    (tmp_path / "bad-id.toml").write_text(box.format(id="b 1"))
    (tmp_path / "backoff.toml").write_text(box.format(id="b1") + "backoff_min_s = 5\nbackoff_max_s = 1\n")
    (tmp_path / "public.toml").write_text('[server]\nlisten = "0.0.0.0:8080"\n')
    (tmp_path / "doctype.xml").write_text('<?xml version="1.0"?><!DOCTYPE a SYSTEM "file:///etc/passwd"><alert/>')
    (tmp_path / "broken.geojson").write_text("{\n")
    (tmp_path / "junk-key").mkdir()
    (tmp_path / "junk-key" / "box.key").write_text("not a key\n")
    (tmp_path / "bad-regions.toml").write_text('[county]\nid = "c"\nname = "县"\n[[township]]\nid = "t"\n'
                                               'name = "镇"\nextra = 1\n')
    db = f'[database]\nurl = "sqlite:///{tmp_path}/county.db"\n'
    (tmp_path / "bad-regions-county.toml").write_text(f'[county]\nregions = "{tmp_path}/bad-regions.toml"\n{db}')
    (tmp_path / "county.key").write_text("not a PEM key\n")
    (tmp_path / "bad-key-county.toml").write_text(f'[signing]\nkey = "{tmp_path}/county.key"\nkid = "k"\n{db}')
    regions = REPO / "county" / "regions.example.toml"
    (tmp_path / "county.toml").write_text(f'[county]\nregions = "{regions}"\n{db}')
    (tmp_path / "short-pw.txt").write_text("short\n")
    (tmp_path / "sped.toml").write_text('[scenario]\nname = "x"\nsped = 3\n')
    return {"unknown_wearer": str(tmp_path / "unknown-wearer.toml"), "big": str(tmp_path / "big.mp3"),
            "pw": str(tmp_path / "pw.txt"),
            "key": str(key), "pub": str(pub), "bad": str(tmp_path / "bad.toml"), "cfg": str(cfg),
            "notkey": str(tmp_path / "not-a-key.pem"), "dir": str(tmp_path / "existing"),
            "missing": str(tmp_path / "missing.toml"), "tmp": str(tmp_path),
            **{name.split(".")[0].replace("-", "_"): str(tmp_path / name)
               for name in ("bad-id.toml", "backoff.toml", "public.toml", "doctype.xml", "broken.geojson", "junk-key",
                            "bad-regions-county.toml", "bad-key-county.toml", "county.toml", "short-pw.txt",
                            "sped.toml")}}


SIGN = ["--key", "{key}", "--kid", "county-2026"]
# (name, argv with {placeholders}, the exit code, a fixed phrase of the Chinese line)
CASES: list[tuple[str, list[str], int, str]] = [
    ("keys: never overwrites", ["keys", "new", "taken", "--dir", "{dir}"], 1, "密钥绝不覆盖"),
    ("keys: bad name", ["keys", "new", "bad name", "--dir", "{tmp}"], 1, "密钥名必须是"),
    ("agent check: no such config", ["agent", "check", "-c", "{missing}"], 2, "文件不存在"),
    ("agent check: not TOML", ["agent", "check", "-c", "{bad}"], 2, "不是有效的 TOML"),
    ("agent status: not TOML", ["agent", "status", "-c", "{bad}"], 2, "不是有效的 TOML"),
    ("agent status: agent never ran", ["agent", "status", "-c", "{cfg}"], 1, "状态目录不存在"),
    ("agent: config required", ["agent", "check"], 2, "缺少必需的参数"),
    ("village: no such area", ["nowhere"], 2, "无效的选择"),
    ("village: bad --lang", ["--lang", "fr", "agent", "check", "-c", "{cfg}"], 2, "请选择 zh 或 en"),
    ("sim: no such scenario", ["sim", "run", "--scenario", "{missing}"], 2, "文件不存在"),
    ("sim: scenario not TOML", ["sim", "run", "--scenario", "{bad}"], 2, "不是有效的 TOML"),
    ("sim: scenario names no such wearer", ["sim", "run", "--scenario", "{unknown_wearer}"], 2, "没有这个佩戴者"),
    ("sim: broker not mqtt", ["sim", "run", "--broker", "http://x:1"], 2, "只接受 mqtt://"),
    ("sim: speed 0", ["sim", "run", "--speed", "0"], 2, "必须 > 0"),
    ("sim fleet: no boxes", ["sim", "fleet", "--boxes", "0", "--broker", "mqtt://x:1", "--duration", "1"], 2,
     "--boxes 必须"),
    ("county push: ttl too long", ["county", "push", *SIGN, "--to", "box:a", "--text", "t", "--ttl", "99d"], 2,
     "不在 1s..31d 之间"),
    ("county push: no key", ["county", "push", "--to", "box:a", "--text", "t"], 2, "请给 --key"),
    ("county push: server and key", ["county", "push", *SIGN, "--server", "http://x:1", "--user", "li", "--to",
                                     "box:a", "--text", "t"], 2, "只能二选一"),
    ("county push: server without user", ["county", "push", "--server", "http://x:1", "--to", "box:a", "--text",
                                          "t"], 2, "--server 需要 --user"),
    ("county push: unreachable broker, password masked",
     ["county", "push", *SIGN, "--broker", "mqtt://admin:s3cr3t-pw@127.0.0.1:1", "--to", "box:a", "--text", "t"],
     1, "连不上消息服务器"),
    ("county push: not a key", ["county", "push", "--key", "{notkey}", "--kid", "k", "--broker", "mqtt://x:1",
                                "--to", "box:a", "--text", "t"], 1, "不是 PEM 私钥"),
    ("county push: start already past", ["county", "push", *SIGN, "--broker", "mqtt://127.0.0.1:1", "--to",
                                         "box:a", "--text", "t", "--at", "2026-01-05T08:00"], 2, "没有发送"),
    ("county push: no broker", ["county", "push", *SIGN, "--to", "box:a", "--text", "t"], 1, "没有消息服务器"),
    ("county fences: bad --assign", ["county", "fences", *SIGN, "--to", "box:a", "--file", "{missing}",
                                     "--assign", "W1"], 2, "不是 佩戴者=围栏1,围栏2"),
    ("county watch: count 0", ["county", "watch", "--count", "0"], 2, "不是 1 或更大的数"),
    ("county push: bad target", ["county", "push", *SIGN, "--to", "town:x", "--text", "t"], 2, "不是 box:编号"),
    ("county push: bad duration", ["county", "push", *SIGN, "--to", "box:x", "--text", "t", "--ttl", "soon"], 2,
     "不是时长"),
    ("county push: negative wait", ["county", "push", *SIGN, "--to", "box:x", "--text", "t", "--wait", "-1"], 2,
     "不是 >= 0 的秒数"),
    ("county push: unknown zone", ["county", "push", *SIGN, "--to", "box:x", "--text", "t", "--tz",
                                   "Mars/Olympus"], 2, "未知时区"),
    ("county push: volume", ["county", "push", *SIGN, "--to", "box:x", "--text", "t", "--volume", "101"], 2,
     "音量 101 不在 0-100 之间"),
    ("county push: not a time", ["county", "push", *SIGN, "--to", "box:x", "--text", "t", "--at", "tomorrow"], 2,
     "不是 ISO 8601 时间"),
    ("county push: end before start", ["county", "push", *SIGN, "--to", "box:x", "--text", "t", "--at", "+2h",
                                       "--until", "+1h"], 2, "--until 必须晚于 --at"),
    ("county push: audio too big", ["county", "push", *SIGN, "--broker", "mqtt://127.0.0.1:1", "--to", "box:x",
                                    "--audio", "{big}"], 1, "超过随指令发送音频的上限"),
    ("county push --server: no password", ["county", "push", "--server", "http://127.0.0.1:1", "--user", "li",
                                           "--to", "box:a", "--text", "t"], 1, "--server 需要密码"),
    ("county push --server: unreachable", ["county", "push", "--server", "http://127.0.0.1:1", "--user", "li",
                                           "--password-file", "{pw}", "--to", "box:a", "--text", "t"], 1,
     "连不上县级服务器"),
    ("county push: missing --to", ["county", "push", *SIGN, "--text", "t"], 2, "缺少必需的参数"),
    ("county serve: no config", ["county", "serve", "-c", "{missing}"], 2, "文件不存在"),
    ("county user add: no config", ["county", "user", "add", "li", "--role", "operator", "--password-file",
                                    "{missing}", "-c", "{missing}"], 2, "文件不存在"),
    ("county audit check: no config", ["county", "audit", "check", "-c", "{missing}"], 2, "文件不存在"),
    # the validators' own problems (made with N_, said through words.problem)
    ("agent check: bad box id", ["agent", "check", "-c", "{bad_id}"], 2, "'b 1' 不符合 [A-Za-z0-9_-]{1,64}"),
    ("agent check: backoff order", ["agent", "check", "-c", "{backoff}"], 2, "必须 >= backoff_min_s"),
    ("county serve: open port without TLS", ["county", "serve", "-c", "{public}"], 2, "不是本机回环地址"),
    ("county push: CAP with a DOCTYPE", ["county", "push", *SIGN, "--to", "box:a", "--cap", "{doctype}"], 1,
     "CAP 文档带有 DOCTYPE，已拒绝"),
    ("county fences: not JSON", ["county", "fences", *SIGN, "--to", "box:a", "--file", "{broken}"], 1,
     "不是 JSON"),
    ("agent identity: bad box id", ["agent", "identity", "--box-id", "bad id", "--dir", "{tmp}/id"], 2,
     "盒子编号 'bad id' 不符合"),
    ("agent identity: box id from a bad config", ["agent", "identity", "-c", "{bad_id}", "--dir", "{tmp}/id"], 2,
     "不符合 [A-Za-z0-9_-]{1,64}"),
    ("agent identity: not a key", ["agent", "identity", "--box-id", "b1", "--dir", "{junk_key}"], 1,
     "不是可用的 PEM 私钥"),
    ("release show: no manifest", ["release", "show", "--pub", "{pub}", "--kid", "county-2026", "{missing}"], 1,
     "文件或目录不存在"),
    ("county serve: regions file with an unknown key", ["county", "serve", "-c", "{bad_regions_county}"], 2,
     "未知的键"),
    ("county serve: signing key not PEM", ["county", "serve", "-c", "{bad_key_county}"], 2, "不是 PEM 私钥"),
    ("county user add: bad name", ["county", "user", "add", "bad name", "--role", "viewer", "--password-file",
                                   "{pw}", "-c", "{county}"], 2, "用户名 'bad name' 不符合"),
    ("county user add: no such scope", ["county", "user", "add", "wang", "--role", "operator", "--scope", "atlantis",
                                        "--password-file", "{pw}", "-c", "{county}"], 2, "不是区划文件里的乡镇"),
    ("county user add: short password", ["county", "user", "add", "wang", "--role", "viewer", "--password-file",
                                         "{short_pw}", "-c", "{county}"], 2, "密码少于 8 个字符"),
    ("county user add: no password file", ["county", "user", "add", "wang", "--role", "viewer", "--password-file",
                                           "{missing}", "-c", "{county}"], 2, "读不了：文件或目录不存在"),
    ("county audit check: bad --head", ["county", "audit", "check", "--head", "nonsense", "-c", "{county}"], 2,
     "不是 audit check 打印的"),
    ("sim: scenario with an unknown key", ["sim", "run", "--scenario", "{sped}", "--no-live"], 2,
     "未知的键（这里可用的："),
    ("agent relay-off: no such config", ["agent", "relay-off", "-c", "{missing}"], 2, "文件不存在"),
    ("release build: no key", ["release", "build", "--out", "{tmp}/bundle", "--key", "{missing}", "--kid", "k"], 1,
     "文件不存在"),
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("name,argv,code,phrase", CASES, ids=[c[0] for c in CASES])
def test_error_path_in_chinese_and_english(name: str, argv: list[str], code: int, phrase: str,
                                           files: dict[str, str], capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VILLAGE_BROKER", raising=False)
    monkeypatch.delenv("VILLAGE_COUNTY_PASSWORD", raising=False)
    args = [a.format(**files) for a in argv]
    en_code, en_err = run(["--lang", "en", *args], capsys)
    zh_code, zh_err = run(["--lang", "zh", *args], capsys)
    assert en_code == code and zh_code == code, (en_err, zh_err)
    assert not CJK.search(en_err.split(" (请")[0]), en_err  # English stays English (a bad --lang says both)
    assert phrase in zh_err and CJK.search(zh_err), zh_err
    if "usage" not in en_err:  # argparse's usage block aside, every error is one line
        assert len(zh_err.splitlines()) == 1 == len(en_err.splitlines()), (en_err, zh_err)
    assert "s3cr3t-pw" not in zh_err + en_err


def test_language_from_the_environment(files: dict[str, str], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VILLAGE_LANG", "")
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    assert run(["agent", "check", "-c", files["missing"]], capsys) == (2, f"village: {files['missing']}: 文件不存在")
    monkeypatch.setenv("VILLAGE_LANG", "en")  # VILLAGE_LANG before the locale
    assert run(["agent", "check", "-c", files["missing"]], capsys)[1].endswith("file does not exist")
    assert run(["agent", "check", "-c", files["missing"], "--lang", "zh"], capsys)[1].endswith("文件不存在")


def test_nobody_hears_on_a_real_broker(tmp_path: Path, files: dict[str, str], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VILLAGE_BROKER", raising=False)
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        argv = ["county", "push", *[a.format(**files) for a in SIGN], "--broker", broker.url, "--to",
                "group:nobody", "--text", "t"]
        en = run(["--lang", "en", *argv], capsys)
        zh = run(["--lang", "zh", *argv], capsys)
    finally:
        broker.stop()
    assert en[0] == zh[0] == 4
    assert "no box is known on this broker" in en[1]
    assert "这台消息服务器上没有已知盒子" in zh[1] and "没有发送" in zh[1] and len(zh[1].splitlines()) == 1


def test_the_receipt_board_and_status_headings_in_chinese(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from agent.protocol.topics import Topics
    from county.console import ReceiptBoard, print_board

    i18n.set_lang("zh")
    board = ReceiptBoard("c1", ["box:lhk-1", "box:lhk-2"], Topics())
    board.rows["lhk-1"].state, board.rows["lhk-1"].reason = "rejected", "bad_signature"
    out = io.StringIO()
    print_board(board, out, as_json=False)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["盒子", "状态", "原因", "时间"]
    assert lines[1].split()[:3] == ["lhk-1", "已拒绝", "签名无效"] and "(bad_signature)" in lines[1]
    assert lines[2].split() == ["lhk-2", "无应答"]
    # columns line up by display width: "状态" starts where the states start
    assert i18n.width(lines[0][:lines[0].index("状态")]) == i18n.width(lines[1][:lines[1].index("已拒绝")])


def test_agent_status_reads_in_chinese_with_local_times() -> None:
    from agent import status

    now = 1_796_000_000.0
    st = status.Status("lhk-1", "/var/lib/village-agent", now,
                       status.OutboxView(True, {"alarm": 1, "receipt": 0, "event": 0, "telemetry": 3}, 2048,
                                         {"alarm": int((now - 120) * 1000), "receipt": None, "event": None,
                                          "telemetry": None}, 1842, 1900, {}),
                       status.LinkView(True, "connected", "mqtts://county.example:8883", now - 120, now - 5),
                       {"plausible": True, "synchronised": False,
                        "reason": "not NTP-synchronised; plausible but may be off by any amount"})
    i18n.set_lang("zh")
    text = status.render(st)
    assert "链路       已连接 mqtts://county.example:8883，自 " in text and "（2.0 分钟前）" in text
    assert "  报警" in text and "发件箱     4 条消息，2048 字节" in text
    assert "时钟       警告：没有对上网络时间" in text
    assert not re.search(r"\b(?:box|link|outbox|oldest|ago|WARNING)\b", text), text
    i18n.set_lang("en")
    english = status.render(st)
    assert "link       connected mqtts://county.example:8883 since" in english and "WARNING: not NTP" in english


def test_watch_lines_say_what_in_words_beside_the_codes() -> None:
    from agent.protocol.envelope import Envelope, MsgClass
    from agent.protocol.topics import Topics
    from county.console import format_envelope, format_state

    env = Envelope("box-a", 42, 1_763_900_000_123, MsgClass.ALARM, "sos", {"wearer": "W1"})
    topic = Topics().up("box-a", MsgClass.ALARM, "sos")
    i18n.set_lang("zh")
    line = format_envelope(topic, env.encode(), Topics())
    assert "box-a  报警/SOS 求救 (alarm/sos)  #42" in line and '{"wearer":"W1"}' in line
    assert format_state("box-a", b'{"state":"offline"}').endswith("box-a  状态  离线 (offline)")
    i18n.set_lang("en")
    assert "box-a  alarm/sos  #42" in format_envelope(topic, env.encode(), Topics())


def test_fleet_result_in_chinese() -> None:
    from sim.fleet import FleetResult

    r = FleetResult(boxes=8, connected=8, connects=8, max_connects_per_s=8, sent=80, queued_at_end=0, received=80,
                    unique=80, msgs_per_s=4.0, expected_per_s=4.0, p50_ms=3.0, p95_ms=5.0, p99_ms=9.0, max_ms=12.0,
                    window_s=20.0)
    i18n.set_lang("zh")
    text = r.describe()
    assert text.splitlines()[0].startswith("批量：8 个盒子") and "p99 9 ms" in text and "盒子里还排着 0 条" in text
    i18n.set_lang("en")
    assert r.describe().startswith("fleet: 8 boxes, 8 connected at the end")


def test_the_demo_speaks_chinese_unless_told_and_says_how_to_switch(tmp_path: Path) -> None:
    """./scripts/demo --help (what it would run, without running it): Chinese by default, one line on switching."""
    import hashlib
    import os
    import shutil
    import subprocess

    from tests.conftest import REPO

    stamp = REPO / ".venv" / ".village-installed"
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    have = stamp.read_text().strip() if stamp.exists() else ""
    if have not in (f"{want}-[test]", f"{want}-[sim,county]") or not shutil.which("espeak-ng") or \
            not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("the demo would install packages first (venv or Debian packages not as scripts/test left them)")
    env = {k: v for k, v in os.environ.items() if k not in ("VILLAGE_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = "C.UTF-8"
    zh = subprocess.run([str(REPO / "scripts" / "demo"), "--help"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
    assert zh.returncode == 0, zh.stderr
    first, *rest = zh.stdout.splitlines()
    assert "--lang en" in first and "VILLAGE_LANG=en" in first and CJK.search(first)
    assert i18n.width(first) <= 80  # one line, even on an 80-column terminal
    assert rest[0].startswith("用法：village sim run")
    en = subprocess.run([str(REPO / "scripts" / "demo"), "--lang", "en", "--help"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
    assert en.returncode == 0 and en.stdout.splitlines()[1].startswith("usage: village sim run")
    assert "--lang zh" in en.stdout.splitlines()[0]
