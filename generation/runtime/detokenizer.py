"""Turn a growing list of token ids into exact text deltas.

Byte-level tokenizers split multi-byte characters (Japanese, emoji) across
tokens; decoding such a prefix ends in U+FFFD. The detokenizer holds those
bytes back until the character is complete, so the concatenated deltas always
equal the decode of all generated tokens and a client never sees U+FFFD that
the final text does not contain. A reply that ends in the middle of a
character (cancelled, cut at its token budget, failed, interrupted) drops the
held-back bytes: the reply is the text that streamed.
"""

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Per-sequence text state; `push` each new token, `flush` at the end."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.emitted = ""

    def _certain(self) -> str:
        """The decoded text without its trailing U+FFFDs, which stand for the
        bytes of a character still incomplete."""
        text = self.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text.rstrip(REPLACEMENT)

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now certain (maybe empty)."""
        self.token_ids.append(token_id)
        return self._advance(self._certain())

    def flush(self) -> str:
        """Return the complete text still held back once no token will follow;
        the bytes of an unfinished last character are dropped.

        A reply whose last character really is U+FFFD loses it: its bytes
        cannot be told from an unfinished character's by the decoded text.
        """
        return self._advance(self._certain())

    def _advance(self, text: str) -> str:
        # Byte-level decoding is prefix-stable once its tail is complete, and
        # the emitted text never ends in a held-back partial character.
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta

    @property
    def text(self) -> str:
        """The text emitted so far."""
        return self.emitted
