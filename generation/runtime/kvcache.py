"""A KV cache that grows in place instead of being copied every step.

transformers' DynamicLayer appends each step's keys and values with
`torch.cat`, copying the whole cache of every layer once per token, a large
share of a decode step on a CPU. `GrowingLayer` keeps spare room on the
sequence axis (doubling when full), so a step writes one column and hands
the attention a view. The interleave engine uses it; the ragged engine keeps
each sequence's KV in one block instead (generation.runtime.seqkv).
"""

import inspect

import torch
from transformers import LlamaForCausalLM
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

MIN_CAPACITY = 64


class GrowingLayer(DynamicLayer):
    """One layer's keys and values in buffers with spare sequence room.

    `keys` and `values` are always views of the filled part, so code that
    reads them (the engine, the attention masks) sees a DynamicLayer.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None):
        # Not super()'s: transformers 4.57 passes the keys alone, 5.x the keys
        # and the values, and DynamicLayer's signature follows. What it sets
        # is the same in both (5.x no longer sets `dtype`, which nothing here
        # reads).
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_empty((0,))
        self.values = key_states.new_empty((0,)) if value_states is None else value_states.new_empty((0,))
        self.is_initialized = True
        self._key_buffer = self._value_buffer = None
        self._length = 0

    def update(self, key_states, value_states, *args, **kwargs):
        # The rest is what the model passes along (4.57: `cache_kwargs`;
        # 5.x: `kwargs=`, the attention's keyword arguments); none of it
        # changes where a step's keys go.
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
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


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which `model`'s forward takes the KV cache.

    transformers 5.x renamed `past_key_values` to `cache` (the old name is
    still accepted until 5.40, with a FutureWarning on every forward pass);
    4.57 knows only `past_key_values`. Read from the forward's signature
    (decorators keep it through `functools.wraps`), once per engine; a
    wrapper whose forward passes `**kwargs` on gets the name the installed
    transformers' Llama takes."""
    for forward in (model.forward, LlamaForCausalLM.forward):
        parameters = inspect.signature(forward).parameters
        for name in ("cache", "past_key_values"):
            if name in parameters:
                return name
    return "past_key_values"
