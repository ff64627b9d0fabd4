"""One sequence's own keys and values, for the ragged batch.

Each running sequence keeps the KV of every layer in ONE block of its own,
[layers, 2 (keys, values), kv_heads, capacity, head_dim], with spare room on
the token axis so that a decode step writes one column instead of copying
the cache. No other sequence's length shows in it: a 3,000-token prompt
does not widen the short replies beside it (the left-padded batch this
replaced held every row at the longest row's width), and a sequence joins
or leaves the batch without copying anyone's KV.

One allocation per sequence, not sixty: a large block gets pages of its own
from the C allocator, which go back to the system when it is freed (small
ones fragment the heap and keep the process's RSS up, as
generation/runtime/prefixcache.py found).
"""

import torch

MIN_SPARE = 32
"""Tokens of room a block always gets beyond what it must hold."""

SPARE_FRACTION = 8
"""A growing block gets 1/SPARE_FRACTION of its tokens as spare room. An
eighth, not a quarter: at 16 conversations of some 900 tokens the spare
room is memory held for nothing (a quarter: up to 170 MB, an eighth: up to
85). The price is twice as many growth copies: a 675-token block (30 MB)
took 25-42 ms to grow into fresh pages (2026-12-07 11:11 UTC, load
average 5), once per 84 decode steps, so at 16 such sequences some 5-7 ms
per step of some 150 ms: 2-3% more than a quarter's (not measured end
to end: docs/benchmarks.md, "Memory: moving KV instead of copying it")."""


class SequenceKV:
    """The growing KV block of one sequence.

    `length` tokens are filled; `reserve` makes room (growing by an eighth,
    so appends cost amortised O(1) copies per token), `write` stores one
    layer's keys and values at a position, `layer` gives views of the filled
    part. Not thread safe; the model thread alone uses it."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.shape = (layers, 2, kv_heads, 0, head_dim)
        self.dtype, self.device = dtype, device
        self.block: torch.Tensor | None = None
        # Per layer, views of the block's whole capacity ([1, heads, capacity,
        # dim]), made once per growth: a step then slices each once, where
        # indexing the block would cost four view ops per layer and sequence.
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self.length = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "SequenceKV":
        """An empty block shaped for `model` (a transformers decoder: its
        config's layers, KV heads and head size; its weights' dtype)."""
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        weight = next(model.parameters())
        return cls(
            config.num_hidden_layers, config.num_key_value_heads, head_dim, weight.dtype, weight.device
        )

    @property
    def capacity(self) -> int:
        return 0 if self.block is None else self.block.shape[3]

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token's keys and values take, all layers (SmolLM2-135M in
        float32: 30 x 2 x 3 x 64 x 4 = 46,080)."""
        layers, two, heads, _, dim = self.shape
        return layers * two * heads * dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes this sequence's KV holds (spare room included)."""
        return 0 if self.block is None else self.block.nbytes

    def reserve(self, tokens: int) -> None:
        """Make room for `tokens` in all (filled ones included): grow, with
        spare room of 1/SPARE_FRACTION (at least MIN_SPARE), when they do not
        fit."""
        if tokens <= self.capacity:
            return
        layers, two, heads, _, dim = self.shape
        capacity = tokens + max(MIN_SPARE, tokens // SPARE_FRACTION)
        block = torch.empty((layers, two, heads, capacity, dim), dtype=self.dtype, device=self.device)
        if self.length:
            block[:, :, :, : self.length] = self.block[:, :, :, : self.length]
        self._use(block)

    def adopt(self, block: torch.Tensor, length: int) -> None:
        """Take over `block` ([layers, 2, heads, capacity, dim], its first
        `length` tokens filled: a prefix cache entry's own, given up by the
        store) instead of copying it. Tokens are only ever written past
        `length`, so views of its first `length` tokens held elsewhere (a
        waiting prompt's shorter reused prefix) stay valid."""
        if block.shape[:3] != self.shape[:3] or block.shape[4] != self.shape[4] or block.shape[3] < length:
            raise ValueError(
                f"A block of shape {tuple(block.shape)} cannot hold {length} tokens of {self.shape}."
            )
        self._use(block)
        self.length = length

    def _use(self, block: torch.Tensor) -> None:
        self.block = block
        self._keys = [block[index, 0][None] for index in range(self.shape[0])]
        self._values = [block[index, 1][None] for index in range(self.shape[0])]

    def load(self, layers: list[tuple[torch.Tensor, torch.Tensor]], room: int = 0) -> None:
        """Start from a copy of these per-layer keys and values ([1, heads,
        tokens, dim] each: a reused prefix), with room for `room` tokens in all."""
        tokens = layers[0][0].shape[-2]
        self.reserve(max(tokens, room))
        for index, (keys, values) in enumerate(layers):
            self.block[index, 0, :, :tokens] = keys[0]
            self.block[index, 1, :, :tokens] = values[0]
        self.length = tokens

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        """Store one layer's keys and values ([1, heads, n, dim]) for
        positions start..start+n-1 (room reserved beforehand)."""
        end = start + keys.shape[-2]
        self._keys[layer][:, :, start:end] = keys
        self._values[layer][:, :, start:end] = values

    def layer(self, layer: int, end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one layer's first `end` (default `length`) keys and
        values, [1, heads, end, dim]."""
        end = self.length if end is None else end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of every layer's filled keys and values."""
        if self.block is None:
            return []
        return [self.layer(index) for index in range(self.shape[0])]
