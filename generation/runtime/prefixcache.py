"""Prefix reuse: the KV of finished sequences, kept for the next turn.

Turn 20 of a conversation starts with the 19 turns the engine already saw:
the previous prompt and the reply it wrote. When a sequence leaves the
engine, its keys and values (prompt and reply, as far as the model read
them) are kept here under their token ids; a new prompt that starts with
the same ids starts from that KV, and its prefill covers only the rest.

KV is moved, not copied, where it can be (the ragged engine): a leaving
sequence's own block becomes the entry, and the next turn of that
conversation (a prompt extending a WHOLE entry) takes the entry's block
over, leaving the store. A conversation's KV then lives once, in the store
between its turns and in its sequence while a turn runs, never in both:
with 16 conversations running, the store no longer holds a second copy of
each one's history (issue #14's memory bar; docs/benchmarks.md, "Memory:
moving KV instead of copying it"). A prompt that shares only part of an
entry (the template's system turn, an edited conversation) copies that
part and leaves the entry in place.

The match is on token ids, never text: a conversation that was trimmed,
edited or regenerated shares only the ids it really shares (perhaps just
the system turn, perhaps nothing), and gets exactly that much. The store
holds at most `budget_bytes` of keys and values; the least recently used
entries go first, and an entry whose ids start another's is dropped as the
longer one arrives (the next turn supersedes the previous one). A prompt
waiting for its chunked prefill holds views of the entry it will reuse, so
an entry evicted meanwhile lives on, outside the budget, until that
prefill starts.

Not thread safe: the model thread alone uses it, through the engine.
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [1, kv_heads, tokens, head_dim]

TAKE_SLACK = 16
"""A prompt that shares all of an entry but at most this many trailing ids
takes the entry over (`lookup`'s `take`): the next turn of a conversation
whose reply re-tokenised differently at its end. A prompt sharing less (a
system turn, an edited conversation) copies what it shares."""


@dataclass
class _Entry:
    ids: torch.Tensor  # [tokens] int64
    block: torch.Tensor  # [layers, 2, kv_heads, capacity >= tokens, head_dim]; layers are views of it
    layers: list[LayerKV]
    nbytes: int  # the block's, spare room included
    lent: int = 0  # the longest prefix of it handed out as views (read later by a waiting prompt)


class Reuse(NamedTuple):
    """What `lookup` found: the first `tokens` of the prompt have their KV
    in `layers` (per layer (keys, values) [1, heads, tokens, dim], views).
    `block` is None when those views are the store's, to be copied; else
    the whole entry was taken out of the store and `block` ([layers, 2,
    heads, capacity, dim], the views' base) is the caller's to keep and
    write past `tokens`."""

    tokens: int
    layers: list[LayerKV]
    block: torch.Tensor | None = None


class PrefixCache:
    """Reusable KV of finished sequences, in an LRU store of at most
    `budget_bytes` (0 keeps nothing: reuse off).

    `hit_tokens` counts the prompt tokens whose KV came from here, since the
    start; `evictions` the entries dropped to stay in the budget."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError("The prefix cache budget must be 0 (off) or more bytes.")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._next_key = 0
        self.nbytes = 0
        self.hit_tokens = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt_ids: list[int], take: bool = False) -> Reuse:
        """The longest stored prefix of `prompt_ids`, at most all but its last
        token (the prefill needs one token to compute the first reply
        token's logits), or Reuse(0, []) when nothing matches. A prompt that
        extends a whole entry makes it the most recently used, or, with
        `take`, takes its block over (also when it shares all but at most
        TAKE_SLACK trailing ids, unless views reaching past its shared ids
        were handed out): the entry leaves the store (and its budget) and
        the block is the caller's (`Reuse.block`), to write past the shared
        ids. A partial hit does neither: every chat prompt shares the template's system
        turn with every entry, and would otherwise keep them all fresh; the
        tokens it shares come back anyway when the sequence that reused
        them leaves, in its own entry."""
        if not self._entries or len(prompt_ids) < 2:
            return Reuse(0, [])
        prompt = torch.tensor(prompt_ids[:-1], dtype=torch.long)
        best_key, best = None, 0
        for key, entry in self._entries.items():
            shared = _common_prefix(entry.ids, prompt)
            if shared > best:
                best_key, best = key, shared
        if best_key is None:
            return Reuse(0, [])
        entry = self._entries[best_key]
        self.hit_tokens += best
        layers = [(keys[:, :, :best], values[:, :, :best]) for keys, values in entry.layers]
        # The next turn of the entry's conversation: all of it, or all but a
        # short tail (the chat re-tokenises the reply's text, and its last
        # few ids may come out differently). The taker writes past `best`,
        # so only if nobody holds views reaching past it.
        if take and best >= len(entry.ids) - TAKE_SLACK and best >= entry.lent:
            self._drop(best_key)
            return Reuse(best, layers, entry.block)
        entry.lent = max(entry.lent, best)
        if best == len(entry.ids):
            self._entries.move_to_end(best_key)
        return Reuse(best, layers)

    def store(self, ids: list[int], layers: list[LayerKV], block: torch.Tensor | None = None) -> None:
        """Keep the KV of a sequence that left the engine: `ids` the tokens
        the model read, `layers` per layer (keys, values) [1, heads,
        len(ids), dim]. `block`: the sequence's own block ([layers, 2,
        heads, capacity, dim], which those layers view), given up by it:
        kept as it is, no copy, counting its real bytes (spare room
        included); without one (or one larger than the whole budget) the
        layers are copied. Entries whose ids start `ids` are dropped
        (superseded); if a stored entry already starts with `ids`, nothing
        is added. Least recently used entries are evicted to make room; a
        sequence larger than the whole budget keeps its leading tokens
        only."""
        if self.budget_bytes == 0 or not ids:
            return
        per_token = sum(k.nbytes + v.nbytes for k, v in layers) // len(ids)
        tokens = min(len(ids), self.budget_bytes // max(per_token, 1))
        if tokens == 0:
            return
        if block is not None and (tokens < len(ids) or block.nbytes > self.budget_bytes):
            block = None  # too large to keep whole: copy what fits
        new_ids = torch.tensor(ids[:tokens], dtype=torch.long)
        for key, entry in list(self._entries.items()):
            shared = _common_prefix(entry.ids, new_ids)
            if shared == len(new_ids):  # already covered
                self._entries.move_to_end(key)
                return
            if shared == len(entry.ids):  # superseded
                self._drop(key)
        nbytes = per_token * tokens if block is None else block.nbytes
        while self._entries and self.nbytes + nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        if block is None:
            block = _copy(layers, tokens)
        views = [
            (block[index, 0][None, :, :, :tokens], block[index, 1][None, :, :, :tokens])
            for index in range(len(block))
        ]
        self._entries[self._next_key] = _Entry(new_ids, block, views, nbytes)
        self._next_key += 1
        self.nbytes += nbytes

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes


def _copy(layers: list[LayerKV], tokens: int) -> torch.Tensor:
    """The first `tokens` of each layer's keys and values, copied into ONE
    block ([layers, 2, heads, tokens, dim]). One large allocation gets pages of its own from the C allocator,
    which go back to the system when the entry is evicted; some sixty small
    ones per entry would fragment the heap and keep the process's memory
    above the budget."""
    keys, values = layers[0]
    block = keys.new_empty((len(layers), 2, keys.shape[1], tokens, keys.shape[-1]))
    for index, (keys, values) in enumerate(layers):
        block[index, 0] = keys[0, :, :tokens]
        block[index, 1] = values[0, :, :tokens]
    return block


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading ids two 1-d id tensors share."""
    n = min(len(a), len(b))
    differ = torch.nonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n
