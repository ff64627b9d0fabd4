"""Untrusted text: one length, one check of what can be stored, grapheme-safe cuts."""

import re

import pytest

from generation import text

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one grapheme, 7 code points
FLAG = "\U0001f1eb\U0001f1f7"  # one grapheme, 2 code points


def test_length_counts_code_points():
    """An emoji is one character, not two UTF-16 units; a joined family is seven."""
    assert text.length("\U0001f600" * 8000) == 8000
    assert text.length(FAMILY) == 7
    assert text.length("e\u0301") == 2


@pytest.mark.parametrize(
    "value",
    [
        "tab\tand\nnewline\r\n",
        "\u202eright-to-left override\u202c and \u200bzero\u200dwidth",
        "\U0001f600 \U0001d11e four-byte",
        "\x1b[31mANSI\x1b[0m \x07 \x7f \x85",
        "\ufeff\ufffe\uffff noncharacters",
    ],
)
def test_text_that_can_be_stored_is_kept_exactly(value):
    """Controls other than NUL, RTL and zero-width marks, emoji: all kept as they are."""
    assert text.check(value, what="message", limit=100) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a\x00b", "null characters"),
        ("a\ud800b", "unpaired surrogate (U+D800)"),
        ("\udfff", "unpaired surrogate (U+DFFF)"),
        ("x" * 11, "longer than 10 characters"),
    ],
)
def test_text_that_cannot_be_stored_is_refused_with_a_reason(value, reason):
    """NUL, lone surrogates and over-long text are refused, saying which."""
    with pytest.raises(text.TextRefused, match=re.escape(reason)):
        text.check(value, what="message", limit=10)


def test_storable_replaces_only_what_cannot_be_stored():
    """The model's text is stored whatever it holds: NUL and lone surrogates become U+FFFD."""
    assert text.storable("a\x00b\ud83dc\U0001f600") == "a\ufffdb\ufffdc\U0001f600"


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("abc", 5, "abc"),
        ("ab" + FAMILY, 5, "ab"),
        ("ab" + FAMILY, 9, "ab" + FAMILY),
        (FLAG * 3, 5, FLAG * 2),
        ("cafe\u0301s", 4, "caf"),
        ("\U0001f600" * 3, 2, "\U0001f600" * 2),
    ],
)
def test_truncate_cuts_only_between_graphemes(value, limit, expected):
    """A cut never leaves half a family emoji, half a flag or an accent without its letter."""
    assert text.truncate(value, limit) == expected
