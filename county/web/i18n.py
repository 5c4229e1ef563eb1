"""The console's one gettext catalog (domain `console`): zh_CN (the default) and en, read from the .po files.

Strings come from three kinds of source, all extracted by Babel:
- templates (county/web/templates/*.html): `{{ _("Boxes") }}` or `{% trans %}...{% endtrans %}` (Jinja2's
  i18n extension, newstyle: `_("%(n)s boxes", n=3)`);
- scripts (county/web/static/js/**.js): `t("Boxes")`, placeholders `t("{n} boxes", {n: 3})`;
- Python under county/web/ (page titles, nav labels): `N_("Overview")` marks a string to translate later.

The .po files are the source of truth and are read at run time through Babel (`read_po`): no compiled .mo is
needed or committed. `python -m county.web.i18n update` extracts every string and merges it into both
catalogs (new entries come with an empty msgstr to fill in); `check` exits 1 naming each string a catalog
lacks, leaves untranslated or fuzzy, or whose placeholders differ from the msgid's, and each bit of template
text that is not marked for translation. tests/test_web_i18n.py runs `check`.

Msgids are English; a msgid is its own en translation only when written so in en/console.po.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOCALE_DIR = HERE / "locale"
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
DOMAIN = "console"
LOCALES = ("zh_CN", "en")
DEFAULT_LOCALE = "zh_CN"
LANG_COOKIE = "vc_lang"
# BCP 47 tags for <html lang> and the browser's Intl formatters
BCP47 = {"zh_CN": "zh-CN", "en": "en"}

KEYWORDS = {"_": None, "gettext": None, "N_": None, "t": None}
PY_KEYWORDS = {"_": None, "gettext": None, "N_": None}
METHODS = [
    ("templates/**.html", "jinja2.ext:babel_extract"),
    ("static/js/**.js", "javascript"),
    ("**.py", "python"),
]
OPTIONS = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "newstyle_gettext": "true",
                                 "trimmed": "true"},
           "static/js/**.js": {"parse_template_string": "false"}}

_PLACEHOLDER = re.compile(r"%\([A-Za-z_][A-Za-z0-9_]*\)s|\{[A-Za-z_][A-Za-z0-9_]*\}")


def po_path(locale: str) -> Path:
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def normalize(locale: str | None) -> str:
    """A known locale for a cookie / query value ("en", "en-US", "zh", "zh-CN"...); the default otherwise."""
    if not locale:
        return DEFAULT_LOCALE
    low = locale.replace("-", "_").lower()
    if low.startswith("en"):
        return "en"
    return DEFAULT_LOCALE


# ------------------------------------------------------------------------------------------- run time
@dataclass(frozen=True)
class Catalog:
    locale: str
    messages: dict[str, str]  # msgid -> msgstr (translated, not fuzzy)

    def gettext(self, msgid: str) -> str:
        return self.messages.get(msgid) or msgid

    def ngettext(self, singular: str, plural: str, n: int) -> str:  # Jinja's i18n extension wants one
        return self.gettext(singular if n == 1 else plural)


def read_messages(locale: str) -> dict[str, str]:
    from babel.messages.pofile import read_po

    with po_path(locale).open("rb") as f:
        cat = read_po(f, locale=locale, domain=DOMAIN)
    out: dict[str, str] = {}
    for m in cat:
        if m.id and isinstance(m.id, str) and isinstance(m.string, str) and m.string and not m.fuzzy:
            out[m.id] = m.string
    return out


@functools.cache
def catalog(locale: str) -> Catalog:
    """The catalog of a locale (read once per process)."""
    locale = normalize(locale)
    return Catalog(locale, read_messages(locale))


@functools.cache
def catalog_json(locale: str) -> bytes:
    """What the browser's t() looks strings up in: `{"locale": ..., "messages": {msgid: msgstr}}`."""
    cat = catalog(locale)
    return json.dumps({"locale": cat.locale, "messages": cat.messages}, ensure_ascii=False,
                      sort_keys=True).encode("utf-8")


# ------------------------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class Found:
    msgid: str
    where: str  # file:line


def extract() -> list[Found]:
    """Every string marked for translation in the console's templates, scripts and Python files."""
    from babel.messages.extract import extract_from_dir

    out: list[Found] = []
    # Python's keywords exclude t (a common variable name there); the scripts' include it
    for methods, keywords in ((METHODS[:2], KEYWORDS), (METHODS[2:], PY_KEYWORDS)):
        for filename, lineno, message, _comments, _context in extract_from_dir(
                HERE, methods, OPTIONS, keywords, directory_filter=_wanted_dir):
            msgid = message if isinstance(message, str) else message[0]
            if msgid:
                out.append(Found(msgid, f"county/web/{filename}:{lineno}"))
    return out


def _wanted_dir(dirpath: str) -> bool:
    name = Path(dirpath).name
    return name not in ("locale", "__pycache__", "vendor") and not name.startswith(".")


_JINJA = re.compile(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", re.S)
_TAG = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1>|<[^>]*>", re.S | re.I)
_ENTITY = re.compile(r"&[A-Za-z]+;|&#\d+;")
_LETTER = re.compile(r"[^\W\d_]", re.U)


def unmarked_template_text(paths: Iterable[Path] | None = None) -> list[str]:
    """Text in templates shown to a user but not marked for translation: what is left after removing
    Jinja tags and expressions, HTML tags and entities must hold no letter (`file:line: text`). Text
    inside `{% trans %}` blocks is marked; attributes shown to users (title, placeholder, aria-label,
    alt) must hold an expression."""
    problems: list[str] = []
    for path in sorted(paths if paths is not None else TEMPLATES.rglob("*.html")):
        src = path.read_text(encoding="utf-8")
        src = re.sub(r"\{%-?\s*trans\b.*?\{%-?\s*endtrans\s*-?%\}", lambda m: "\n" * m.group(0).count("\n"), src,
                     flags=re.S)
        for attr in re.finditer(r'\b(title|placeholder|aria-label|alt)="([^"]*)"', src):
            if _LETTER.search(_JINJA.sub("", attr.group(2))):
                lineno = src.count("\n", 0, attr.start()) + 1
                problems.append(f"{path.name}:{lineno}: {attr.group(1)}=\"{attr.group(2)}\" is not translated")
        blanked = _JINJA.sub(lambda m: "\n" * m.group(0).count("\n"), src)
        blanked = _TAG.sub(lambda m: "\n" * m.group(0).count("\n"), blanked)
        blanked = _ENTITY.sub("", blanked)
        for n, line in enumerate(blanked.splitlines(), 1):
            if _LETTER.search(line):
                problems.append(f"{path.name}:{n}: {line.strip()!r} is not marked for translation")
    return problems


def placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def check(found: list[Found] | None = None) -> list[str]:
    """Problems with the catalogs against the sources (empty when complete)."""
    from babel.messages.pofile import read_po

    found = extract() if found is None else found
    problems = unmarked_template_text()
    for locale in LOCALES:
        with po_path(locale).open("rb") as f:
            cat = read_po(f, locale=locale, domain=DOMAIN)
        seen: set[str] = set()
        for item in found:
            if item.msgid in seen:
                continue
            seen.add(item.msgid)
            m = cat.get(item.msgid)
            if m is None:
                problems.append(f"{locale}: missing {item.msgid!r} ({item.where})")
            elif not m.string:
                problems.append(f"{locale}: untranslated {item.msgid!r} ({item.where})")
            elif m.fuzzy:
                problems.append(f"{locale}: fuzzy {item.msgid!r} ({item.where})")
            elif isinstance(m.string, str) and placeholders(m.string) != placeholders(item.msgid):
                problems.append(f"{locale}: placeholders of {item.msgid!r} differ in {m.string!r}")
    return problems


def update(fill_en: bool = False) -> list[str]:
    """Merge the extracted strings into both catalogs (new ones untranslated, unused ones dropped);
    `fill_en`: an untranslated en entry gets its msgid (msgids are English). Returns what changed."""
    from babel.messages.catalog import Catalog as BabelCatalog
    from babel.messages.pofile import read_po, write_po

    template = BabelCatalog(domain=DOMAIN, project="village-edge county console")
    for item in extract():
        template.add(item.msgid)
    changes: list[str] = []
    for locale in LOCALES:
        path = po_path(locale)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("rb") as f:
                cat = read_po(f, locale=locale, domain=DOMAIN)
        else:
            cat = BabelCatalog(locale=locale, domain=DOMAIN, project="village-edge county console")
        before = {m.id for m in cat if m.id}
        cat.update(template, no_fuzzy_matching=True)
        if fill_en and locale == "en":
            for m in cat:
                if m.id and isinstance(m.id, str) and not m.string:
                    m.string = m.id
        after = {m.id for m in cat if m.id}
        changes += [f"{locale}: + {i!r}" for i in sorted(map(str, after - before))]
        changes += [f"{locale}: - {i!r}" for i in sorted(map(str, before - after))]
        with path.open("wb") as f:
            write_po(f, cat, width=120, no_location=True, sort_output=True, ignore_obsolete=True)
    catalog.cache_clear()
    catalog_json.cache_clear()
    return changes


def _read(locale: str) -> Any:
    from babel.messages.pofile import read_po

    with po_path(locale).open("rb") as f:
        return read_po(f, locale=locale, domain=DOMAIN)


def _write(locale: str, cat: Any) -> None:
    from babel.messages.pofile import write_po

    with po_path(locale).open("wb") as f:
        write_po(f, cat, width=120, no_location=True, sort_output=True, ignore_obsolete=True)
    catalog.cache_clear()
    catalog_json.cache_clear()


def todo(locale: str) -> dict[str, str]:
    """The entries of a locale still without a translation, as `{msgid: ""}` (what `fill` takes back)."""
    return {str(m.id): "" for m in _read(locale) if m.id and isinstance(m.id, str) and (not m.string or m.fuzzy)}


def fill(locale: str, translations: dict[str, str]) -> list[str]:
    """Set msgstr of existing entries from `{msgid: msgstr}`; an unknown msgid is reported, not added."""
    cat = _read(locale)
    unknown = []
    for msgid, text in translations.items():
        m = cat.get(msgid)
        if m is None:
            unknown.append(f"{locale}: no entry {msgid!r} (run update first)")
        elif text:
            m.string = text
            m.flags.discard("fuzzy")
    _write(locale, cat)
    return unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m county.web.i18n",
                                     description="the county web console's gettext catalogs")
    parser.add_argument("command", choices=["extract", "update", "check", "todo", "fill"],
                        help="extract: list the marked strings; update: merge them into zh_CN and en; "
                             "check: exit 1 if a catalog lacks one")
    parser.add_argument("--fill-en", action="store_true",
                        help="update: give each new en entry its msgid (then fix the ones that differ)")
    parser.add_argument("locale", nargs="?", choices=LOCALES, help="todo / fill: the catalog")
    parser.add_argument("file", nargs="?", type=Path, help="fill: a JSON file {msgid: msgstr}")
    args = parser.parse_args(argv)
    if args.command == "todo":
        print(json.dumps(todo(args.locale or DEFAULT_LOCALE), ensure_ascii=False, indent=1))
        return 0
    if args.command == "fill":
        if args.file is None:
            parser.error("fill needs LOCALE FILE.json")
        problems = fill(args.locale, json.loads(args.file.read_text(encoding="utf-8")))
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    if args.command == "extract":
        for item in extract():
            print(f"{item.where}\t{item.msgid}")
        return 0
    if args.command == "update":
        for line in update(args.fill_en):
            print(line)
        return 0
    problems = check()
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s): fill the msgstr in county/web/locale/*/LC_MESSAGES/{DOMAIN}.po "
              "(python -m county.web.i18n update adds the new strings)", file=sys.stderr)
        return 1
    print("catalogs complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
