"""The Chinese operator docs (docs/zh/) against the code as it is.

Every `village ...` command in their code blocks parses with the real argparse parsers (nothing is run), and
every command named inline (`village county push`) exists; `./scripts/demo ARGS` lines are parsed as the
`village sim run` they become. 现场排查 explains every reason code of the one table (agent/words.py)."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import i18n, words

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "zh"
NAMES = ("安装与接线.md", "现场排查.md", "模拟器演练.md", "县级操作.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`((?:sudo (?:-u \w+ )?)?village [^`]+)`")


def parser_for(area: str) -> argparse.ArgumentParser:
    if area == "agent":
        from agent.cli import _agent_parser

        return _agent_parser()
    if area == "sim":
        from sim.cli import build_parser as sim_parser

        return sim_parser()
    if area == "county":
        from county.cli import build_parser as county_parser

        return county_parser()
    if area == "keys":
        from agent.keys import build_parser as keys_parser

        return keys_parser()
    if area == "release":
        from agent.release import build_parser as release_parser

        return release_parser()
    if area == "agent identity":  # its own parser (agent/cli.py hands it the rest of argv)
        from agent.identity import build_parser as identity_parser

        return identity_parser()
    raise AssertionError(f"no such area: village {area}")


def commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(the line as written, argv after `village`) for each command in the code blocks."""
    for _lang, body in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            words_ = shlex.split(line) if line else []
            while words_ and words_[0] in ("sudo", "env"):
                words_ = words_[3:] if words_[1:2] == ["-u"] else words_[1:]
            if words_[:1] == ["village"]:
                yield line, words_[1:]
            elif words_[:1] == ["./scripts/demo"]:
                yield line, ["sim", "run", "--scenario", "sim/scenarios/menglou.toml", *words_[1:]]


def parse(argv: list[str]) -> argparse.Namespace:
    rest, lang = i18n.take_lang(argv)
    if lang is not None:
        i18n.choose(lang)  # a --lang the CLI would refuse fails here too
    area, args = rest[0], rest[1:]
    if rest[:2] == ["agent", "identity"]:
        area, args = "agent identity", rest[2:]
    return parser_for(area).parse_args(args)


@pytest.fixture(autouse=True)
def english() -> Iterator[None]:
    i18n.set_lang("en")
    yield
    i18n.set_lang("en")


@pytest.mark.parametrize("name", NAMES)
def test_every_quoted_command_parses(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = (DOCS / name).read_text("utf-8")
    found = list(commands(text))
    assert len(found) >= 3, f"{name}: too few commands to be a technician's page"
    for line, argv in found:
        try:
            parse(argv)
        except SystemExit as exc:
            pytest.fail(f"{name}: `{line}` does not parse (exit {exc.code}): {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("name", NAMES)
def test_every_command_named_inline_exists(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    for span in INLINE.findall((DOCS / name).read_text("utf-8")):
        if ": " in span or re.search(r"[\u4e00-\u9fff]", span):
            continue  # an output line's shape ("village county 命令: 哪里不对"), not a command
        words_ = shlex.split(span)
        while words_[0] == "sudo":
            words_ = words_[3:] if words_[1:2] == ["-u"] else words_[1:]
        path = [w for w in words_[1:] if not w.startswith("-")][:2]
        if not path:
            continue
        if path == ["agent", "identity"]:
            path = ["agent identity"]
        with pytest.raises(SystemExit) as exc:
            parser_for(path[0]).parse_args([*path[1:], "--help"])
        assert exc.value.code == 0, f"{name}: `{span}` names no such command"
        capsys.readouterr()


def test_troubleshooting_explains_every_reason_code() -> None:
    text = (DOCS / "现场排查.md").read_text("utf-8")
    missing = [code for code in words.REASONS if f"`{code}`" not in text]
    assert not missing, f"现场排查.md does not explain: {missing}"
    i18n.set_lang("zh")
    for code in words.REASONS:  # the doc's words are the catalog's words
        row = next(line for line in text.splitlines() if line.startswith(f"| `{code}` |"))
        assert row.split("|")[2].strip() == words.reason(code).rsplit(" (", 1)[0], row


def test_a_command_that_does_not_parse_is_caught() -> None:
    bad = "```sh\nvillage county push --ttl 99d --to box:x --text hi\nvillage sim run --speed fast\n```\n"
    for _line, argv in commands(bad):
        with pytest.raises(SystemExit):
            parse(argv)
