"""The "village" catalog: every marked string of the sources is in zh_CN and en, translated, with the same
placeholders; the run-time reader agrees with Babel's; the language is chosen as documented; every reason code
the code emits is in the one table of reasons (agent/words.py)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from agent import i18n, words

ROOT = Path(__file__).resolve().parents[1]
CATALOGS = {lang: i18n.LOCALE_DIR / code / "LC_MESSAGES" / f"{i18n.DOMAIN}.po" for lang, code in i18n.CATALOGS.items()}


def extracted() -> set[str]:
    with open(ROOT / "agent" / "locale" / "babel.cfg", encoding="utf-8") as f:
        method_map, options_map = parse_mapping_cfg(f)
    keywords = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}
    ids: set[str] = set()
    for _file, _line, message, _comments, _ctx in extract_from_dir(str(ROOT), method_map, options_map,
                                                                    keywords=keywords):
        ids.add(message if isinstance(message, str) else message[0])
    return ids


def babel_catalog(lang: str) -> dict[str, str]:
    with open(CATALOGS[lang], "rb") as f:
        cat = read_po(f)
    return {m.id: m.string for m in cat if m.id and not m.fuzzy}


def placeholders(text: str) -> set[str]:
    brace = {f"{{{name}}}" for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}
    return brace | set(re.findall(r"%\(\w+\)[sdr]|%[sdr]", text))


def test_the_sources_mark_strings_and_the_catalogs_hold_every_one() -> None:
    ids = extracted()
    assert len(ids) > 250  # the CLI's and the simulator's words, not a handful
    for marked in ("Village sim: {name}", "bad signature", "usage: ", "county: ALARM {kind}: {who}"):
        assert marked in ids
    for lang in i18n.LANGS:
        catalog = babel_catalog(lang)
        missing = sorted(m for m in ids if not catalog.get(m))
        assert not missing, f"{lang}: not in the catalog (run scripts/i18n, then translate): {missing}"
    # (entries no source uses any more are harmless; scripts/i18n drops them)


def test_translations_keep_the_placeholders() -> None:
    for lang in i18n.LANGS:
        for msgid, msgstr in babel_catalog(lang).items():
            assert placeholders(msgid) == placeholders(msgstr), (lang, msgid, msgstr)
    zh = babel_catalog("zh")
    chinese = sum(1 for v in zh.values() if re.search(r"[\u4e00-\u9fff]", v))
    assert chinese > 0.9 * len(zh)  # translated, not copied: the few left are codes like "MQTT"-only strings


def test_the_run_time_reader_agrees_with_babel() -> None:
    for lang in i18n.LANGS:
        ours = {k: v[0] for k, v in i18n.parse_po(CATALOGS[lang].read_text("utf-8")).items()}
        assert ours == babel_catalog(lang)


def test_reader_handles_multiline_escapes_plurals_and_fuzzy() -> None:
    po = '''msgid ""
msgstr "Plural-Forms: nplurals=1; plural=0;\\n"

msgid "a \\"q\\"\\n"
msgstr ""
"line one "
"two\\t"

#, fuzzy
msgid "draft"
msgstr "nope"

msgid "one file"
msgid_plural "{n} files"
msgstr[0] "{n} 个文件"

msgid "untranslated"
msgstr ""
'''
    assert i18n.parse_po(po) == {'a "q"\n': ("line one two\t",), "one file": ("{n} 个文件",)}


def test_language_choice_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert i18n.choose(None, {"LANG": "zh_CN.UTF-8"}) == "zh"
    assert i18n.choose(None, {"LANG": "en_US.UTF-8"}) == "en"
    assert i18n.choose(None, {}) == "en"
    assert i18n.choose(None, {"LANGUAGE": "zh_CN:en", "LANG": "en_US.UTF-8"}) == "zh"
    assert i18n.choose(None, {"VILLAGE_LANG": "en", "LANG": "zh_CN.UTF-8"}) == "en"
    assert i18n.choose("zh", {"VILLAGE_LANG": "en"}) == "zh"
    with pytest.raises(i18n.LangError):
        i18n.choose("fr", {})
    with pytest.raises(i18n.LangError):
        i18n.choose(None, {"VILLAGE_LANG": "klingon"})
    assert i18n.take_lang(["sim", "run", "--lang", "zh", "--no-live"]) == (["sim", "run", "--no-live"], "zh")
    assert i18n.take_lang(["--lang=en", "keys"]) == (["keys"], "en")
    assert i18n.take_lang(["county", "push", "--", "--lang", "zh"]) == (["county", "push", "--", "--lang", "zh"], None)
    with pytest.raises(i18n.LangError):
        i18n.take_lang(["agent", "--lang"])


def test_translated_words_switch_with_the_language() -> None:
    try:
        i18n.set_lang("zh")
        assert words.state_reason("rejected", "bad_signature") == "已拒绝：签名无效 (bad_signature)"
        assert words.reason("no_such_code") == "no_such_code"
        i18n.set_lang("en")
        assert words.state_reason("rejected", "bad_signature") == "rejected: bad signature (bad_signature)"
    finally:
        i18n.set_lang("en")
    assert i18n.width("盒子ab") == 6 and i18n.pad("盒子", 6) == "盒子  "


def test_every_reason_code_the_code_emits_is_in_the_one_table() -> None:
    pattern = re.compile(r'CommandRejected\(\s*"([a-z_]+)"|reason\s*=\s*"([a-z_]+)"'
                         r'|Notify\([^)]*?"([a-z_]+)",\s*"([a-z_]+)"')
    found: set[str] = set()
    for path in [*ROOT.glob("agent/**/*.py"), *ROOT.glob("county/*.py")]:
        for m in pattern.finditer(path.read_text("utf-8")):
            found.update(g for g in m.groups()[:3] if g)
            if m.group(4):
                found.add(m.group(4))
    receipt_states = set(words.STATES)
    codes = {c for c in found if c not in receipt_states}
    assert {"bad_signature", "expired", "quiet_hours"} <= found
    missing = sorted(codes - set(words.REASONS))
    assert not missing, f"reason codes with no words in agent/words.py REASONS: {missing}"


def test_a_box_reads_the_catalog_with_the_stdlib_alone() -> None:
    """No Babel, no site-packages at all: what a box has (agent/i18n.py reads the .po itself)."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from agent import i18n, words; i18n.set_lang('zh'); "
            "print(words.state_reason('rejected', 'bad_signature')); "
            "print('babel' in sys.modules, any('site-packages' in p for p in sys.path))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60,
                         env={"PYTHONIOENCODING": "utf-8"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["已拒绝：签名无效 (bad_signature)", "False False"]


def test_the_wheel_ships_the_catalogs() -> None:
    import fnmatch
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["package-data"]
    for path in CATALOGS.values():
        rel = path.relative_to(ROOT / "agent").as_posix()
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in data.get("agent", [])), rel
