"""Turn a growing list of token ids into exact text deltas, and find stop strings.

Byte-level tokenizers split multi-byte characters (Japanese, emoji) across
tokens; decoding such a prefix ends in U+FFFD. The detokenizer holds those
bytes back until the character is complete, so the concatenated deltas always
equal the decode of all generated tokens and a client never sees U+FFFD that
the final text does not contain. A reply that ends in the middle of a
character (cancelled, cut at its token budget, failed, interrupted) drops the
held-back bytes: the reply is the text that streamed.

With stop strings (SamplingParams.stop), it also holds back the tail of the
text that could still become the start of one (for stop "###", a text
ending in "##"), so that no part of a stop string is ever sent. Once the
text contains a stop string, `stopped` is set and the reply is the text
before it: the stop string and whatever the same token decoded after it are
dropped. When the reply ends without a stop string, `flush` sends the
held-back tail. This is what vLLM's detokenizer does (vllm/v1/engine/
detokenizer.py, `check_stop_strings`), on whole characters.
"""

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Per-sequence text state; `push` each new token, `flush` at the end.
    `stop`: the request's stop strings (non-empty; may be empty)."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = stop
        self.token_ids: list[int] = []
        self.emitted = ""
        self.stopped = False  # the text reached a stop string: the reply is over

    def _certain(self) -> str:
        """The decoded text without its trailing U+FFFDs, which stand for the
        bytes of a character still incomplete."""
        text = self.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text.rstrip(REPLACEMENT)

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now certain (maybe empty).
        After a stop string was reached (`stopped`), nothing more is returned."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        text = self._certain()
        if not self.stop:
            return self._advance(text)
        # Byte-level decoding is prefix-stable, and no stop string can begin
        # inside the emitted text (its possible starts were held back), so
        # only the pending tail needs searching.
        pending = text[len(self.emitted) :]
        found = [index for index in (pending.find(stop) for stop in self.stop) if index >= 0]
        if found:
            self.stopped = True
            return self._advance(self.emitted + pending[: min(found)])
        return self._advance(text[: len(text) - self._stop_prefix(pending)])

    def flush(self) -> str:
        """Return the complete text still held back once no token will follow
        (a tail that could have begun a stop string included); the bytes of an
        unfinished last character are dropped. Empty after a stop string.

        A reply whose last character really is U+FFFD loses it: its bytes
        cannot be told from an unfinished character's by the decoded text.
        """
        if self.stopped:
            return ""
        return self._advance(self._certain())

    def _stop_prefix(self, pending: str) -> int:
        """The length of the longest tail of `pending` that is the start of a
        stop string (0 if none): what must be held back for now."""
        longest = 0
        for stop in self.stop:
            # Only tails shorter than the stop string can be a proper start of it.
            start = max(len(pending) - len(stop) + 1, 0)
            while (start := pending.find(stop[0], start)) >= 0 and len(pending) - start > longest:
                if stop.startswith(pending[start:]):
                    longest = len(pending) - start
                    break
                start += 1
        return longest

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
