"""A KV cache that grows in place instead of being copied every step.

transformers' DynamicLayer appends each step's keys and values with
`torch.cat`, copying the whole cache of every layer once per token, a large
share of a decode step on a CPU. `GrowingLayer` keeps spare room on the
sequence axis (doubling when full), so a step writes one column and hands
the attention a view. The interleave engine uses it; the ragged engine keeps
each sequence's KV in one block instead (generation.runtime.seqkv).
"""

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

MIN_CAPACITY = 64


class GrowingLayer(DynamicLayer):
    """One layer's keys and values in buffers with spare sequence room.

    `keys` and `values` are always views of the filled part, so code that
    reads them (the engine, the attention masks) sees a DynamicLayer.
    """

    def lazy_initialization(self, key_states: torch.Tensor):
        super().lazy_initialization(key_states)
        self._key_buffer = self._value_buffer = None
        self._length = 0

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        end = self._length + key_states.shape[-2]
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            self._grow(key_states, value_states, end)
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Set the contents wholesale (a reused prefix, selected rows)."""
        if not self.is_initialized:
            self.lazy_initialization(keys)
        self._key_buffer = self._value_buffer = None
        self._length = 0
        # Spare room, so that the next decode step does not grow (copy) it again.
        self._grow(keys, values, keys.shape[-2] + max(MIN_CAPACITY, keys.shape[-2] // 8))
        self._key_buffer[:, :, : keys.shape[-2]] = keys
        self._value_buffer[:, :, : keys.shape[-2]] = values
        self._length = keys.shape[-2]
        self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self.replace(self.keys[indices], self.values[indices])

    def _grow(self, key_states, value_states, needed: int) -> None:
        capacity = max(
            needed, MIN_CAPACITY, 2 * (self._key_buffer.shape[-2] if self._key_buffer is not None else 0)
        )
        batch, heads, _, dim = key_states.shape
        new_keys = key_states.new_zeros((batch, heads, capacity, dim))
        new_values = value_states.new_zeros((batch, heads, capacity, value_states.shape[-1]))
        if self._length:
            new_keys[:, :, : self._length] = self._key_buffer[:, :, : self._length]
            new_values[:, :, : self._length] = self._value_buffer[:, :, : self._length]
        self._key_buffer, self._value_buffer = new_keys, new_values

    def _expose(self) -> None:
        self.keys = self._key_buffer[:, :, : self._length]
        self.values = self._value_buffer[:, :, : self._length]


class GrowingCache(DynamicCache):
    """A DynamicCache whose layers are GrowingLayers."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
