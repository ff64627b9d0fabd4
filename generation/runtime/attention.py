"""Attention for the engines, and every seam with transformers' internals.

Two paths, registered together as the attention implementation "sdpa_gqa":

- Grouped-query attention without copying the KV cache. SmolLM2 has 9
  query heads sharing 3 KV heads. transformers' SDPA path copies every
  cached key and value three times per layer per step (`repeat_kv`)
  whenever an attention mask is given. PyTorch's SDPA reads grouped heads
  directly with `enable_gqa=True`, mask or not. The interleave engine and
  plain model calls use this path, with the same masks as "sdpa".
- The ragged batch (`ragged_forward`): one forward pass over a FLATTENED
  token batch, [1, T], in which each running sequence has a segment of its
  own (one token for a decoding reply, a chunk for a prompt being
  prefilled), each with its own KV (generation.runtime.seqkv), as vLLM's
  varlen batches do. `RaggedBatch`, passed as `past_key_values`, stores each
  segment's new keys and values in its sequence's block; the attention then
  loops over the segments: SDPA of the segment's queries over its own
  sequence's keys, causal within the segment, no padding anywhere.

What this leans on in transformers 4.57 (LlamaModel and LlamaAttention;
kept in this module alone, for a move to 5.x): the attention function's
signature and its `**kwargs`, which carry the model call's extra keyword
arguments (here `ragged`) down to it; `past_key_values.update(keys, values,
layer_idx, cache_kwargs)`, whose result is handed to the attention; the
mask builder asking the cache for `get_mask_sizes`, and skipping the mask
when the key length equals the query length; `position_ids` driving the
rotary embeddings; and `logits_to_keep` as a tensor of indices.
"""

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from generation.runtime.seqkv import SequenceKV

NAME = "sdpa_gqa"


@dataclass
class Segment:
    """One sequence's tokens in a flattened forward pass: `count` tokens
    from index `offset` of the batch, at positions start..start+count-1 of
    the sequence, whose earlier `start` tokens' KV are in `kv`."""

    kv: SequenceKV
    start: int
    offset: int
    count: int
    mask: torch.Tensor | None = None  # set by RaggedBatch: [count, start+count] bool, True attends


class RaggedBatch:
    """The `past_key_values` of one ragged forward pass (duck-typed: only
    what LlamaModel asks of a cache). Room for the segments' new tokens must
    be reserved in their blocks beforehand."""

    is_compileable = False

    def __init__(self, segments: list[Segment]):
        self.segments = segments
        # The calling thread's torch threads, restored after each layer's
        # decode attention (which runs on one: see _ragged_attention).
        self.threads = torch.get_num_threads()
        for segment in segments:
            if segment.count > 1 and segment.start > 0:
                # Bottom-right aligned: query i sees the past and the chunk up
                # to itself. SDPA's is_causal is top-left aligned, wrong here.
                segment.mask = torch.ones(
                    (segment.count, segment.start + segment.count), dtype=torch.bool, device=segment.kv.device
                ).tril(diagonal=segment.start)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Store this layer's new keys and values ([1, kv_heads, T, dim]) in
        each segment's sequence; the attention reads them back from there."""
        for segment in self.segments:
            end = segment.offset + segment.count
            segment.kv.write(
                layer_idx,
                key_states[:, :, segment.offset : end],
                value_states[:, :, segment.offset : end],
                segment.start,
            )
        return key_states, value_states

    def get_mask_sizes(self, cache_position: torch.Tensor | int, layer_idx: int) -> tuple[int, int]:
        # A key length equal to the query length with no padding mask makes
        # transformers' SDPA mask builder return None: no dense [T, T] mask.
        # (4.57 passes the cache positions, 5.x the query length.)
        length = cache_position if isinstance(cache_position, int) else cache_position.shape[0]
        return length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        # 5.x's mask builder: where the queries start (each segment's own
        # offset is the attention's business, not the mask's).
        return 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def ragged_forward(
    model,
    input_ids,
    position_ids,
    batch: RaggedBatch,
    keep: torch.Tensor,
    cache_keyword: str = "past_key_values",
) -> torch.Tensor:
    """Run `model` over a flattened batch: `input_ids`, `position_ids` [1, T]
    (each token's position in its own sequence), the segments in `batch`;
    the logits of the tokens at indices `keep` only ([len(keep), vocab]),
    so that a chunk's other tokens skip the vocabulary projection.
    `cache_keyword`: the forward's name for the cache
    (generation.runtime.kvcache.cache_keyword: 5.x renamed it `cache`). No
    `cache_position`: 5.x dropped it, and 4.57's default, counted from the
    batch's `get_seq_length` of 0, is the same arange(T)."""
    logits = model(
        input_ids=input_ids,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=keep,
        ragged=batch,
        **{cache_keyword: batch},
    ).logits
    return logits[0]


def _ragged_attention(module, query, batch: RaggedBatch, scaling) -> torch.Tensor:
    """Each segment's queries ([1, heads, T, dim] in all) over its own
    sequence's keys and values; [1, T, heads, dim] out.

    A decoding segment (one query) runs on ONE torch thread: its SDPA is
    some 10 us of work, and at two threads each call is a parallel region
    whose barrier waits for the second thread: 130-590 us a call on this
    2-core machine while other processes ran, 480 calls a step at 16
    sequences (docs/benchmarks.md, "Decode attention on one thread").
    Each head's output is computed by one thread either way,
    so the values are the same bit for bit. Prompt chunks keep the
    configured threads."""
    layer = module.layer_idx
    output = query.new_empty((1, query.shape[2], query.shape[1], query.shape[3]))
    threads = current = batch.threads
    try:
        for segment in batch.segments:
            wanted = 1 if segment.count == 1 else threads
            if wanted != current:
                torch.set_num_threads(wanted)  # some 0.1 us: an OpenMP setting
                current = wanted
            end = segment.offset + segment.count
            keys, values = segment.kv.layer(layer, segment.start + segment.count)
            result = torch.nn.functional.scaled_dot_product_attention(
                query[:, :, segment.offset : end],
                keys,
                values,
                attn_mask=segment.mask,
                scale=scaling,
                # Without past, top-left and bottom-right alignment agree.
                is_causal=segment.count > 1 and segment.start == 0,
                enable_gqa=True,
            )
            output[:, segment.offset : end] = result.transpose(1, 2)
    finally:
        if current != threads:
            torch.set_num_threads(threads)
    return output


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for one layer: [batch, heads, q, dim] in, [batch, q, heads,
    dim] out. With `ragged` (a RaggedBatch) among the keyword arguments,
    the segments' attention; else over `key` and `value` with the mask."""
    batch = kwargs.get("ragged")
    if batch is not None:
        return _ragged_attention(module, query, batch, scaling), None
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    is_causal = query.shape[2] > 1 and attention_mask is None
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=getattr(module, "num_key_value_groups", 1) > 1,
    )
    return output.transpose(1, 2).contiguous(), None


def use_gqa_attention(model: torch.nn.Module) -> None:
    """Switch a loaded model to this module's attention (idempotent); the
    ragged engine needs it."""
    AttentionInterface.register(NAME, sdpa_gqa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.config._attn_implementation = NAME
