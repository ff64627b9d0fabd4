"""Stopping a reply that repeats the same span over and over.

Small models fall into loops: the same sentence, or the same few words,
written again and again until the reply budget runs out, which holds a slot
for minutes. A reply is cut, with finish reason `repetition`, as soon as
**its last N tokens are one span of L tokens written K times in a row**,
for some L from MIN_SPAN to MAX_SPAN (8 to 64 tokens), where
K = max(MIN_REPEATS, ceil(MIN_LOOP_TOKENS / L)): at least three copies, and
at least 64 tokens of loop in all (eight copies of an 8-token span, four of
a 16-token one, three of anything from 22 tokens up). A shorter period (one
word said over and over) is also a period of 8, so it is caught too.

What is not cut: a list or table whose rows differ in anything (numbers,
names), a phrase said two or three times, a short run of the same line. Only
the reply's own tokens count, never the prompt's.

Cost: for each span length, a counter of how many tokens in a row equal the
token L places before them; each new token updates the 57 counters with one
comparison each (a few microseconds in Python), however long the reply.
"""

import math

MIN_SPAN = 8
MAX_SPAN = 64
MIN_REPEATS = 3
MIN_LOOP_TOKENS = 64
_SPANS = tuple(range(MIN_SPAN, MAX_SPAN + 1))
# A run of matches this long means the last K * L tokens are K copies.
_NEEDED = tuple((max(MIN_REPEATS, math.ceil(MIN_LOOP_TOKENS / span)) - 1) * span for span in _SPANS)


class LoopDetector:
    """Watches one reply's tokens; `push` says whether the reply now ends in a loop.

    `tokens` is the reply's list of token ids, which the caller appends to
    (the engine's own list, so nothing is copied); call `push` once after
    each append."""

    __slots__ = ("_runs", "tokens")

    def __init__(self, tokens: list[int]):
        self.tokens = tokens
        self._runs = [0] * len(_SPANS)

    def push(self) -> bool:
        """Account for the newest token; True when the reply ends in a loop."""
        tokens = self.tokens
        newest = len(tokens) - 1
        token = tokens[newest]
        runs = self._runs
        looped = False
        for index, span in enumerate(_SPANS):
            if newest >= span and tokens[newest - span] == token:
                runs[index] += 1
                if runs[index] >= _NEEDED[index]:
                    looped = True
            else:
                runs[index] = 0
        return looped


def would_cut(tokens: list[int]) -> bool:
    """Whether a reply of these tokens would have been cut by its end (for tests and tools)."""
    seen: list[int] = []
    detector = LoopDetector(seen)
    for token in tokens:
        seen.append(token)
        if detector.push():
            return True
    return False
