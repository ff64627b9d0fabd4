"""Text that people and the model write: its length, what can be stored, and cutting it.

Everything a person or the model writes is untrusted: any string JSON can
carry may arrive. This module is the one place that decides about it:

- **Length** is counted in Unicode code points, everywhere: the server's
  limits (CHAT_MAX_MESSAGE_CHARS, the title's 200), PostgreSQL's varchar and
  the chat page (`[...text].length`) all count the same way. An emoji is one,
  a family emoji joined with zero-width joiners is seven.
- **Refused**: NUL (U+0000), which PostgreSQL text cannot hold, and lone
  surrogates (U+D800 to U+DFFF), which are not text: JSON's "\\ud800"
  decodes to one in Python, and no database driver can encode it. Both are
  refused, never silently dropped, so that what is stored is exactly what was
  typed. Every other code point is kept, control characters included: tab
  and newline are ordinary text, and other C0 controls (an ANSI escape in a
  pasted terminal log, say) are storable, harmless when shown with
  textContent, and reach the model as text like any other character.
- **Cutting** happens only between grapheme clusters (characters as a person
  sees them, Unicode's extended grapheme clusters, `\\X` in the `regex`
  package), so a title never ends in half a family emoji or a lone accent.
"""

import re

import regex
from django.utils.translation import gettext, gettext_noop

_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")
_GRAPHEME = regex.compile(r"\X")
_SEEN = regex.compile(r"[^\p{White_Space}\p{Cf}\p{Cc}]")
REPLACEMENT = "\ufffd"


class TextRefused(ValueError):
    """Text that cannot be stored; `str(error)` is a sentence for the person who wrote it."""


def length(text: str) -> int:
    """The length of `text` as every limit counts it: Unicode code points."""
    return len(text)


# What `check` may be asked about, marked for translation (the sentences
# below name it in the reader's language).
WHATS = (gettext_noop("message"), gettext_noop("title"), gettext_noop("name"), gettext_noop("stop string"))


def check(text: str, *, what: str, limit: int) -> str:
    """Return `text` unchanged if it can be stored as a `what` (one of WHATS)
    of at most `limit` code points; raise TextRefused, saying why in the
    active language (English outside a request), if it holds NUL or a lone
    surrogate or is too long."""
    bad = _NOT_STORABLE.search(text)
    named = {"what": gettext(what)}
    if bad is not None and bad.group() == "\x00":
        raise TextRefused(gettext("The %(what)s must not contain null characters (U+0000).") % named)
    if bad is not None:
        raise TextRefused(
            gettext("The %(what)s contains an unpaired surrogate (U+%(code)s), which is not text.")
            % {**named, "code": f"{ord(bad.group()):04X}"}
        )
    if length(text) > limit:
        raise TextRefused(
            gettext("The %(what)s is longer than %(limit)s characters. Please shorten it.")
            % {**named, "limit": limit}
        )
    return text


def visible(text: str) -> bool:
    """Whether `text` shows anything: some character that is not white space,
    a format character (zero-width space, direction overrides) or a control
    character. A name made only of those would look empty where it is listed."""
    return _SEEN.search(text) is not None


def storable(text: str) -> str:
    """`text` with each NUL and lone surrogate replaced by U+FFFD, for text that
    must be stored whatever it holds (the model's reply), where refusing is
    not an option."""
    return _NOT_STORABLE.sub(REPLACEMENT, text)


def truncate(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` code points that ends
    between two grapheme clusters. Empty if the first cluster alone is longer."""
    if length(text) <= limit:
        return text
    end = 0
    for cluster in _GRAPHEME.finditer(text):
        if cluster.end() > limit:
            break
        end = cluster.end()
    return text[:end]
