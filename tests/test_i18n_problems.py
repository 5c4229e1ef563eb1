"""Problems in the reader's language: a validator, the CAP parser, a config or key loader makes its text with
`N_(message, **fields)` (agent/i18n.py); the English goes on into logs, receipts and `str(exc)`, and the
console says it again in Chinese through `words.problem`. Every such text of the modules a console reads is
made that way (a source check), and every `village` command's help is Chinese in Chinese mode."""

from __future__ import annotations

import ast
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import i18n, words
from agent.cli import main
from agent.i18n import N_

ROOT = Path(__file__).resolve().parents[1]
CJK = re.compile(r"[\u4e00-\u9fff]")
SENTENCE = re.compile(r"[A-Za-z]{2,}[ ,;:'-]+[A-Za-z]{2,}")

# the modules whose exceptions a console prints (agent check/status, keys, identity, release, county ..., sim ...)
PERSON_FACING = [
    "agent/schema.py", "agent/config.py", "agent/profile.py", "agent/broadcast/settings.py",
    "agent/cameras/settings.py", "agent/update/settings.py", "agent/uplink_settings.py",
    "agent/wearables/settings.py", "agent/wearables/fences.py", "agent/wearables/registry.py",
    "agent/protocol/jws.py", "agent/identity.py", "agent/release.py",
    "county/regions.py", "county/server/config.py", "county/server/cli.py", "county/server/users.py",
    "county/server/audit.py", "county/push.py", "county/media.py",
    "county/server_client.py", "county/cap.py", "county/fences.py", "sim/scenario.py", "sim/fleet.py",
]


@pytest.fixture(autouse=True)
def back_to_english() -> Iterator[None]:
    yield
    i18n.set_lang("en")


def _raised_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, source) of every `raise X(...)` with a bare literal message: an f-string, or a string of words
    (a code such as "bad_cap" beside the message is not one)."""
    src = path.read_text("utf-8")
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                literal = (arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else
                           "".join(v.value for v in arg.values if isinstance(v, ast.Constant))
                           if isinstance(arg, ast.JoinedStr) else "")
                if SENTENCE.search(literal):  # words, not a key like f"gateway[{i}].url" or a code
                    yield node.lineno, ast.get_source_segment(src, node) or ""
                    break


def test_every_problem_a_console_prints_is_made_with_n_() -> None:
    bare = [f"{m}:{line}: {text}" for m in PERSON_FACING for line, text in _raised_texts(ROOT / m)]
    assert not bare, "write these as N_(message, **fields) so the console can say them in Chinese:\n" + "\n".join(bare)


def test_the_catalog_is_extracted_from_every_such_module() -> None:
    """scripts/i18n and the catalog test read babel.cfg: a module outside it would never reach the catalog."""
    import fnmatch

    patterns = re.findall(r"^\[python: (\S+)\]$", (ROOT / "agent/locale/babel.cfg").read_text("utf-8"), re.M)
    glob = [p.replace("**", "*") for p in patterns]  # fnmatch's * crosses "/" already
    assert not [m for m in PERSON_FACING if not any(fnmatch.fnmatch(m, g) for g in glob)]


def test_the_source_check_finds_a_bare_message(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text('def f(v):\n    raise ValueError(f"{v} is bad")\n\ndef g():\n    raise ValueError(N_("ok"))\n'
                      'def h():\n    raise E(415, "not audio", "not_audio")\n'
                      'def i():\n    raise E(415, N_("not audio"), "not_audio")\n')
    assert [line for line, _text in _raised_texts(sample)] == [2, 7]


def test_a_made_problem_keeps_its_english_and_is_said_in_chinese() -> None:
    inner = N_("{value!r} is not [A-Za-z0-9_-]{{1,64}}", value="b 1")
    outer = N_("profile {profile!r} serial.url: {exc}", profile="pi4", exc=ValueError(inner))
    assert inner == "'b 1' is not [A-Za-z0-9_-]{1,64}"  # what logs and receipts carry: English, as before
    assert outer == "profile 'pi4' serial.url: 'b 1' is not [A-Za-z0-9_-]{1,64}"
    i18n.set_lang("zh")
    assert words.problem(inner) == "'b 1' 不符合 [A-Za-z0-9_-]{1,64}"
    assert words.problem(outer) == "硬件型号 'pi4' 的 serial.url：'b 1' 不符合 [A-Za-z0-9_-]{1,64}"  # field said too
    assert N_("must be >= 1, got {value}", value=0) == "must be >= 1, got 0"  # English still, whatever the language
    assert words.problem("must be >= 1, got 0") == "必须 >= 1，实际是 0"
    assert words.problem("file does not exist") == "文件不存在"  # a catalog message as it is
    assert words.problem("never made, never marked") == "never made, never marked"
    i18n.set_lang("en")
    assert words.problem(outer) == outer


def test_system_error_texts_and_parser_places_in_words() -> None:
    i18n.set_lang("zh")
    missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "manifest.jws")
    assert words.problem(str(missing)) == "'manifest.jws': 文件或目录不存在"
    assert words.problem(os.strerror(errno.EACCES)) == "没有权限"
    assert words.problem(N_("{path}: cannot read: {error}", path="pw.txt", error=PermissionError(
        errno.EACCES, os.strerror(errno.EACCES)))) == "pw.txt：读不了：没有权限"
    assert words.problem("Invalid value (at line 3, column 7)") == "Invalid value（第 3 行第 7 列）"
    assert words.problem(f"{os.strerror(errno.EIO)}") == os.strerror(errno.EIO)  # not in the table: as it is


def test_an_exception_a_problem_names_is_kept_as_its_text() -> None:
    """No traceback held alive by the memory; the exception's text (made too) still said in words."""
    from agent.protocol.jws import KeyFileError

    try:
        raise KeyFileError("/etc/k.pub", N_("not a PEM public key"))
    except KeyFileError as exc:
        text = N_("{config}: signing.key: {exc}", config="county.toml", exc=exc)
    made = i18n.made(text)
    assert made is not None and type(made[1]["exc"]) is i18n.Raised and not isinstance(made[1]["exc"], BaseException)
    i18n.set_lang("zh")
    assert words.problem(text) == "county.toml：signing.key：/etc/k.pub: 不是 PEM 公钥"


def test_the_memory_of_made_problems_is_bounded() -> None:
    for n in range(3 * i18n._MADE_MAX):
        N_("must be >= 1, got {value}", value=-n)
    assert len(i18n._made) <= i18n._MADE_MAX
    assert i18n.made(f"must be >= 1, got {-(3 * i18n._MADE_MAX - 1)}") is not None  # the newest are kept
    first = N_("must be >= 1, got {value}", value="first")
    for n in range(i18n._MADE_MAX - 1):
        N_("must be >= 1, got {value}", value=n)
        N_("must be >= 1, got {value}", value="first")  # made again and again: never the oldest
    assert i18n.made(first) is not None


# ---- every command's help, in Chinese ------------------------------------------------------------------------

def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main(["--lang", "zh", *argv, "--help"])
    except SystemExit as stop:  # argparse's --help
        code = stop.code  # type: ignore[assignment]
    assert code == 0
    return capsys.readouterr().out


def _commands(capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[list[str], str]]:
    """Every command path (village, village agent, village agent check, ...) with its help text."""
    todo: list[list[str]] = [[]]
    while todo:
        path = todo.pop()
        text = _help(path, capsys)
        yield path, text
        usage = text.split("\n\n", 1)[0]
        if m := re.search(r"\{([a-z][a-z,-]*)\}\s*(?:\.\.\.)?\s*$", usage.replace("\n", " ")):
            todo.extend([*path, name] for name in m.group(1).split(","))


def _entries(text: str) -> Iterator[str]:
    """The help words of each option and sub-command entry (argparse: '  -x, --xx ARG   words', wrapped)."""
    entry: list[str] = []
    for line in text.splitlines():
        if re.match(r"^  \S", line):  # a new entry
            if entry:
                yield " ".join(entry)
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            entry = [parts[1]] if len(parts) > 1 else []
        elif re.match(r"^\s{4,}\S", line) and entry is not None:
            entry.append(line.strip())
        else:
            if entry:
                yield " ".join(entry)
            entry = []
    if entry:
        yield " ".join(entry)


def test_every_command_help_is_chinese(capsys: pytest.CaptureFixture[str]) -> None:
    seen, english = [], []
    for path, text in _commands(capsys):
        seen.append(" ".join(path))
        for words_ in _entries(text):
            # an entry with words (not only a {choice,list} or a metavar) says them in Chinese
            if re.search(r"[a-z]{3,} [a-z]{2,}", words_) and not CJK.search(words_):
                english.append(f"village {' '.join(path)}: {words_}")
    for command in ("agent identity", "release build", "release show", "county rollout status", "sim fleet",
                    "county user add", "keys new"):
        assert command in seen
    assert not english, "\n".join(english)


def test_the_help_check_sees_an_english_entry() -> None:
    text = ("options:\n  -h, --help   显示本帮助并退出\n"
            "  --prefix PREFIX  topic prefix (default\n                   vc/v1)\n")
    assert list(_entries(text)) == ["显示本帮助并退出", "topic prefix (default vc/v1)"]


# ---- what the newer commands print when they succeed -------------------------------------------------------

def test_identity_says_what_it_made_in_chinese(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--lang", "zh", "agent", "identity", "--box-id", "lhk-1", "--dir", str(tmp_path)]) == 0
    made = capsys.readouterr().out.splitlines()
    assert made[0] == f"已生成密钥 {tmp_path / 'box.key'}" and made[1].startswith("lhk-1 的证书请求（CSR）：")
    assert made[2].startswith("公钥 sha256：")
    assert main(["--lang", "zh", "agent", "identity", "--box-id", "lhk-1", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"保留已有密钥 {tmp_path / 'box.key'}"


def test_rollout_status_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    from county.rollout_cli import print_status

    doc = {"id": "r1", "version": "1.5.0", "state": "halted", "counts": {"healthy": 1, "rolled_back": 1},
           "reason": "1 of 2 boxes failed (1 rolled_back), over the 10% allowed",
           "boxes": [{"box": "lhk-1", "wave": 0, "state": "healthy", "version": "1.5.0"},
                     {"box": "lhk-2", "wave": 1, "state": "rolled_back", "reason": "rolled_back",
                      "detail": "agent check failed"}]}
    i18n.set_lang("zh")
    print_status(doc)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "r1  1.5.0  已暂停  (正常 1, 已回滚 1)"
    assert lines[1] == "  2 个盒子里有 1 个失败（1 rolled_back），超过允许的 10%"
    assert lines[2].split() == ["lhk-1", "试点", "正常", "1.5.0"]
    assert lines[3].split()[:4] == ["lhk-2", "第", "1", "批"]
    assert "已回滚" in lines[3] and "升级已回滚 (rolled_back)" in lines[3] and "agent check failed" in lines[3]
    i18n.set_lang("en")
    print_status(doc)
    assert capsys.readouterr().out.splitlines()[0] == "r1  1.5.0  halted  (healthy 1, rolled back 1)"


def test_agent_check_says_the_config_is_valid_in_chinese(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[box]\nid = "b1"\nprofile = "sim"\n[mqtt]\nurl = "mqtt://li:s3cr3t@127.0.0.1:1"\n')
    assert main(["--lang", "zh", "agent", "check", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"{cfg}：配置有效（密码和密钥已遮盖）" and lines[1] == "配置:" and "硬件型号 sim:" in lines
    assert '    id = "b1"' in lines and "s3cr3t" not in out  # the keys as the TOML spells them; secrets masked
