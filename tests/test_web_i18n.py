"""The console's catalogs are complete: every string of a template, script or page module is translated in
zh_CN and en with the same placeholders, and no template shows text that is not marked for translation
(county/web/i18n.py `check`, also `./scripts/web-i18n check`). The check itself catches each kind of gap."""

from __future__ import annotations

import subprocess
from pathlib import Path

from county.web import i18n

REPO = Path(__file__).resolve().parents[1]


def test_the_catalogs_hold_every_string_of_the_console() -> None:
    found = i18n.extract()
    assert {"Overview", "Log in", "Your role may not do this."} <= {f.msgid for f in found}
    assert any(f.where.endswith(".js:" + f.where.rsplit(":", 1)[1]) for f in found)  # scripts are read too
    assert i18n.check(found) == []


def test_a_string_missing_from_a_catalog_is_named() -> None:
    found = [*i18n.extract(), i18n.Found("A sentence nobody translated", "county/web/templates/x.html:3")]
    problems = i18n.check(found)
    assert "zh_CN: missing 'A sentence nobody translated' (county/web/templates/x.html:3)" in problems
    assert "en: missing 'A sentence nobody translated' (county/web/templates/x.html:3)" in problems


def test_unmarked_template_text_and_attributes_are_named(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('{% extends "base.html" %}\n<h1>{{ _("Boxes") }}</h1>\n<p>Hello there</p>\n'
                    '<input placeholder="Search">\n<p>{% trans %}Marked text{% endtrans %} 12:30 &nbsp;</p>\n'
                    '<button title="{{ _(\'Fine\') }}">→</button>\n', encoding="utf-8")
    problems = i18n.unmarked_template_text([page])
    assert problems == ["bad.html:4: placeholder=\"Search\" is not translated",
                        "bad.html:3: 'Hello there' is not marked for translation"]


def test_placeholders_must_match() -> None:
    assert i18n.placeholders("{n} boxes, %(s)s s") == {"{n}", "%(s)s"}
    assert i18n.placeholders(i18n.catalog("zh_CN").gettext("{n} boxes")) == {"{n}"}


def test_the_script_checks_from_the_command_line() -> None:
    r = subprocess.run([str(REPO / "scripts" / "web-i18n"), "check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "catalogs complete" in r.stdout
