"""The language of what a person reads: one gettext catalog (domain "village") for the CLI and the simulator.

Sources are written in English and mark what a person reads with `_()` (and `N_()` for a string kept in a
table and translated where it is shown). The catalogs are `agent/locale/{zh_CN,en}/LC_MESSAGES/village.po`,
kept with Babel (`scripts/i18n`: extract, update); tests/test_i18n_catalog.py fails on a marked string
missing from either catalog. Machine outputs (`--json`, envelopes, log lines for journald) never go through
here.

The language: `--lang zh|en` on any `village` command (taken out of argv by `take_lang` before argparse
sees it), else `$VILLAGE_LANG`, else the locale (`LANGUAGE`, `LC_ALL`, `LC_MESSAGES`, `LANG` as gettext
reads them: `zh_CN.UTF-8` -> Chinese), else English.

The `.po` files are read at run time by the small reader below instead of compiled `.mo` files: the box
needs no Babel and no msgfmt (not in the stdlib as a module), an editable install needs no build step,
and no generated binary is committed. The reader handles what the catalogs use (msgctxt is not used;
msgid_plural/msgstr[n], multi-line strings, the C escapes Babel writes) and is checked against Babel's own
reader in tests/test_i18n_catalog.py.
"""

from __future__ import annotations

import argparse
import ast
import os
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

DOMAIN = "village"
LOCALE_DIR = Path(__file__).parent / "locale"
LANGS = ("zh", "en")
CATALOGS = {"zh": "zh_CN", "en": "en"}
ENV = "VILLAGE_LANG"

_lang = "en"
_configured = False


class LangError(ValueError):
    """--lang or $VILLAGE_LANG names a language there is no catalog for. Said in both languages: which one
    the reader wanted is exactly what is not known."""


def normalize(value: str) -> str | None:
    """'zh', 'zh_CN', 'zh-CN', 'zh_CN.UTF-8', 'en_US' ... -> 'zh' | 'en'; None for anything else."""
    base = value.strip().split(".")[0].split("@")[0].replace("-", "_").lower()
    for lang in LANGS:
        if base == lang or base.startswith(lang + "_"):
            return lang
    return None


def choose(cli: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """--lang, else $VILLAGE_LANG, else the locale, else English. A bad --lang or $VILLAGE_LANG is a LangError."""
    env = os.environ if env is None else env
    if cli is not None:
        if (lang := normalize(cli)) is None:
            raise LangError(f"--lang {cli!r}: choose zh or en (请选择 zh 或 en)")
        return lang
    if value := env.get(ENV, "").strip():
        if (lang := normalize(value)) is None:
            raise LangError(f"{ENV}={value!r}: choose zh or en (请选择 zh 或 en)")
        return lang
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        if value := env.get(var, ""):
            # LANGUAGE is a list (zh_CN:en); the first entry decides
            return normalize(value.split(":")[0]) or "en"
    return "en"


def take_lang(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """Remove `--lang X` / `--lang=X` (before any `--`) from argv; returns (the rest, X or None)."""
    rest: list[str] = []
    lang: str | None = None
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--":
            rest.extend(items[i:])
            break
        if arg == "--lang":
            if i + 1 >= len(items):
                raise LangError("--lang needs a value: zh or en (请给出 zh 或 en)")
            lang = items[i + 1]
            i += 2
            continue
        if arg.startswith("--lang="):
            lang = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, lang


def setup(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, *, fresh: bool = False) -> list[str]:
    """Switch on the language for this process; returns argv without --lang. Raises LangError.

    `village` itself calls it with fresh=True; a sub-command's main (sim, county, keys) calls it again with
    what is left, which keeps the language already chosen unless it was given another --lang."""
    rest, cli = take_lang(argv or [])
    if cli is not None or fresh or not _configured:
        set_lang(choose(cli, env))
    return rest


def set_lang(lang: str) -> None:
    global _lang, _configured
    if lang not in LANGS:
        raise LangError(f"no catalog for {lang!r}")
    _lang, _configured = lang, True
    # argparse's own words (usage:, error:, "the following arguments are required") from this catalog too
    argparse._ = gettext  # type: ignore[attr-defined]
    argparse.ngettext = ngettext  # type: ignore[attr-defined]


def current() -> str:
    return _lang


# ---- the catalog reader -------------------------------------------------------------------------

Catalog = dict[str, tuple[str, ...]]  # msgid -> (msgstr,) or the msgstr[n] forms


def _unquote(text: str) -> str:
    return ast.literal_eval(text)  # a PO string is a C string literal; Python's reading of one is the same here


def parse_po(text: str) -> Catalog:
    """msgid -> translated forms; untranslated (empty msgstr) and fuzzy entries are left out."""
    out: Catalog = {}
    entry: dict[str, list[str]] = {}
    key: str | None = None
    fuzzy = False

    def flush() -> None:
        nonlocal entry, fuzzy
        if "msgid" in entry:
            msgid = "".join(entry["msgid"])
            forms = tuple("".join(v) for k, v in sorted(entry.items()) if k.startswith("msgstr"))
            if msgid and not fuzzy and forms and all(forms):
                out[msgid] = forms
        entry, fuzzy = {}, False

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            flush()
            key = None
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "fuzzy" in line:
                if "msgid" in entry:
                    flush()
                fuzzy = True
            continue
        if line.startswith('"'):
            if key is not None:
                entry[key].append(_unquote(line))
            continue
        word, _sp, rest = line.partition(" ")
        if word == "msgid" and "msgid" in entry:
            flush()
        key = word
        entry[key] = [_unquote(rest)]
    flush()
    return out


@cache
def catalog(lang: str) -> Catalog:
    path = LOCALE_DIR / CATALOGS[lang] / "LC_MESSAGES" / f"{DOMAIN}.po"
    try:
        return parse_po(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}


def gettext(message: str, lang: str | None = None) -> str:
    """`message` in the chosen language, or in `lang` ("zh" | "en") for one reader among several (a server
    answering each request in its own language must not switch the process's)."""
    forms = catalog(_lang if lang is None else lang).get(message)
    return forms[0] if forms else message


def ngettext(singular: str, plural: str, n: int) -> str:
    forms = catalog(_lang).get(singular)
    if not forms:
        return singular if n == 1 else plural
    index = 0 if _lang == "zh" else (0 if n == 1 else 1)
    return forms[min(index, len(forms) - 1)]


def width(text: str) -> int:
    """Terminal columns: CJK (East Asian wide/fullwidth) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, columns: int) -> str:
    """text padded with spaces to `columns` terminal columns (at least one space after it)."""
    return text + " " * max(1, columns - width(text))


def N_(message: str, /, **fields: object) -> str:
    """Marks a string for the catalog where it is defined; translate it with `_()` where it is shown.

    With fields it makes a problem text now, to be shown later (a validator's ValueError, a CAP parser's
    error): it returns the English `message.format(**fields)`, what logs, receipts and `str(exc)` carry, and
    remembers how that text was made, so the CLI can say it again in the reader's language
    (`words.problem`) without the raising module knowing who reads it. The memory is small and bounded: a
    problem is shown right after it is made, in the same process."""
    if not fields:
        return message
    text = message.format(**fields)
    kept = {k: Raised(v) if isinstance(v, BaseException) else v for k, v in fields.items()}
    with _made_lock:
        _made.pop(text, None)  # made again: the newest, last to be forgotten
        _made[text] = (message, kept)
        if len(_made) > _MADE_MAX:
            del _made[next(iter(_made))]
    return text


class Raised(str):
    """An exception a made problem names, kept as its text: holding the exception would hold its traceback's
    frames alive for as long as the problem is remembered."""


_MADE_MAX = 512
_made: dict[str, tuple[str, dict[str, object]]] = {}
_made_lock = threading.Lock()  # N_ runs in paho's thread too (a token's problem)


def made(text: str) -> tuple[str, dict[str, object]] | None:
    """(message, fields) if `text` was made by `N_(message, **fields)` in this process."""
    with _made_lock:
        return _made.get(text)


_ = gettext

# argparse's messages the CLI can show (Python 3.11's argparse.py), marked so Babel puts them in the catalog
ARGPARSE_MESSAGES = (
    N_("usage: "), N_("positional arguments"), N_("options"), N_("show this help message and exit"),
    N_("%(prog)s: error: %(message)s\n"), N_("the following arguments are required: %s"),
    N_("unrecognized arguments: %s"), N_("invalid choice: %(value)r (choose from %(choices)s)"),
    N_("argument %(argument_name)s: %(message)s"), N_("expected one argument"),
    N_("expected at most one argument"), N_("expected at least one argument"),
    N_("invalid %(type)s value: %(value)r"), N_("not allowed with argument %s"),
    N_("ambiguous option: %(option)s could match %(matches)s"), N_("one of the arguments %s is required"),
    N_("ignored explicit argument %r"),
)
