"""The shipped translations are whole: every word the site can show has a
Japanese translation, with the same placeholders as the English."""

import re
from pathlib import Path

import polib
import pytest

from chatsite.translations import compile_translations

ROOT = Path(__file__).resolve().parents[2]
PO_FILES = sorted((ROOT / "locale").glob("*/LC_MESSAGES/*.po"))
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def test_japanese_is_shipped_for_the_page_and_its_scripts():
    assert {p.relative_to(ROOT).as_posix() for p in PO_FILES} >= {
        "locale/ja/LC_MESSAGES/django.po",
        "locale/ja/LC_MESSAGES/djangojs.po",
    }


@pytest.mark.parametrize("po_path", PO_FILES, ids=lambda p: p.relative_to(ROOT / "locale").as_posix())
def test_every_msgid_is_translated(po_path):
    """No entry is empty or fuzzy (either would show in English), and each
    translation keeps the English's %(name)s placeholders, no more, no fewer."""
    po = polib.pofile(str(po_path))
    assert not po.metadata_is_fuzzy or po.metadata_is_fuzzy == [], "the header is marked fuzzy"
    problems = []
    for entry in po:
        if entry.obsolete:
            continue
        if "fuzzy" in entry.flags:
            problems.append(f"fuzzy: {entry.msgid!r}")
        translations = list(entry.msgstr_plural.values()) if entry.msgid_plural else [entry.msgstr]
        if not translations or any(not text.strip() for text in translations):
            problems.append(f"untranslated: {entry.msgid!r}")
            continue
        wanted = set(PLACEHOLDER.findall(entry.msgid + (entry.msgid_plural or "")))
        for text in translations:
            if set(PLACEHOLDER.findall(text)) != wanted:
                problems.append(f"placeholders differ: {entry.msgid!r} -> {text!r}")
    assert problems == []


def _msgids(domain: str) -> set[str]:
    return {entry.msgid for entry in polib.pofile(str(ROOT / "locale/ja/LC_MESSAGES" / f"{domain}.po"))}


def test_every_word_the_scripts_ask_for_is_in_the_catalog():
    """Each gettext("…") in static/js is in djangojs.po: a word added to a
    script without `manage.py makemessages -d djangojs` would show in
    English to a Japanese reader."""
    asked = set()
    for path in (ROOT / "static/js").glob("*.js"):
        asked |= set(re.findall(r'\bgettext\("((?:[^"\\]|\\.)*)"\)', path.read_text()))
    assert asked, "no gettext call found: the scan is broken"
    assert asked - _msgids("djangojs") == set()


def test_every_word_the_templates_ask_for_is_in_the_catalog():
    """The same for each {% translate "…" %} of the templates and django.po."""
    asked = set()
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        asked |= set(re.findall(r'\{% translate "([^"]+)"', text)) | set(
            re.findall(r"\{% translate '([^']+)'", text)
        )
    assert "Send" in asked, "the scan is broken"
    assert asked - _msgids("django") == set()


def test_compiling_writes_a_mo_that_gettext_reads(tmp_path):
    """chatsite.translations (make messages, the suite's start-up) writes a
    .mo that Python's gettext reads back with the Japanese words."""
    import gettext

    target = tmp_path / "ja/LC_MESSAGES"
    target.mkdir(parents=True)
    (target / "djangojs.po").write_bytes((ROOT / "locale/ja/LC_MESSAGES/djangojs.po").read_bytes())
    assert compile_translations(tmp_path) == [target / "djangojs.mo"]
    assert compile_translations(tmp_path) == []  # up to date: nothing written
    catalog = gettext.translation("djangojs", localedir=tmp_path, languages=["ja"])
    assert catalog.gettext("Send") == "Send"  # not a script word: untouched
    assert catalog.gettext("Regenerate") == "再生成"
