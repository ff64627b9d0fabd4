"""The interleave engine: ChatStream's design, kept as the benchmark baseline.

Each sequence has its own cache (generation.runtime.kvcache) and a step
runs one forward pass per running sequence, round robin. A chunked prompt's
chunks are forward passes of their own, which the model thread runs after
each step (`prefill_step`).
"""

import torch

from generation.runtime.engine import Engine, TokenOutput, _Sequence
from generation.runtime.kvcache import GrowingCache, GrowingLayer
from generation.runtime.prefixcache import LayerKV, Reuse


class InterleaveEngine(Engine):
    """The old design, kept as the benchmark's baseline: one forward pass per
    sequence per step, each over its own cache."""

    def _prefill_whole(self, sequence: _Sequence, reused: Reuse) -> TokenOutput:
        cache = _cache_of(reused.layers)
        input_ids = torch.tensor([sequence.prompt_ids[sequence.length :]], device=self.device)
        # As in prefill_step: only the last position's logits are used.
        logits = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.cache_keyword: cache}
        ).logits
        sequence.length = len(sequence.prompt_ids)
        return self._start(sequence, cache, logits)

    @torch.inference_mode()
    def prefill_step(self, max_tokens: int | None = None) -> TokenOutput | None:
        """Prefill the next chunk (at most `max_tokens`, by default
        `prefill_chunk_tokens` tokens) of the oldest waiting prompt; when that
        was its last chunk, the sequence joins the running ones and its first
        token is returned, else None. Should the forward pass raise, the
        caller removes `next_prefill()`'s sequence."""
        seq_id = self.next_prefill()
        if seq_id is None:
            return None
        waiting = self._waiting[seq_id]
        sequence = waiting.sequence
        if sequence.cache is None:
            sequence.cache, waiting.reused = _cache_of(waiting.reused.layers), Reuse(0, [])
        size = max_tokens or self.prefill_chunk_tokens
        chunk = waiting.prompt_ids[sequence.length : sequence.length + size]
        # Only the last position's logits are ever used: skip the vocabulary
        # projection of the others (a fifth of a prefill's work on SmolLM2).
        logits = self.model(
            input_ids=torch.tensor([chunk], device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_keyword: sequence.cache},
        ).logits
        sequence.length += len(chunk)
        if sequence.length < len(waiting.prompt_ids):
            return None
        del self._waiting[seq_id]
        return self._retire([self._start(sequence, sequence.cache, logits)])[0]

    def _start(self, sequence: _Sequence, cache: GrowingCache, logits: torch.Tensor) -> TokenOutput:
        """A prefilled sequence joins the running ones with its first token,
        sampled from the prompt's last `logits` (not retired yet)."""
        sequence.cache = cache
        token = int(self._sample(logits[:, -1, :], [sequence])[0])
        return self._record(sequence, token)

    def _leave(self, seq_ids: list[str], reusable: bool = True) -> None:
        for seq_id in seq_ids:
            sequence = self.sequences[seq_id]
            if reusable and self.prefix_cache.budget_bytes:
                self._keep(sequence, [(layer.keys, layer.values) for layer in sequence.cache.layers])
            sequence.cache = None

    @torch.inference_mode()
    def step(self) -> list[TokenOutput]:
        outputs = []
        running = [s for s in self.sequences.values() if s.seq_id not in self._waiting]
        for sequence in running:
            input_ids = torch.tensor([[sequence.generated[-1]]], device=self.device)
            logits = self.model(
                input_ids=input_ids,
                position_ids=torch.tensor([[sequence.length]], device=self.device),
                use_cache=True,
                **{self.cache_keyword: sequence.cache},
            ).logits
            sequence.length += 1
            outputs.append(self._record(sequence, int(self._sample(logits[:, -1, :], [sequence])[0])))
        return self._retire(outputs)


def _cache_of(layers: list[LayerKV]) -> GrowingCache:
    """A new cache holding a copy of these per-layer keys and values (none:
    an empty cache)."""
    cache = GrowingCache()
    for keys, values in layers:
        layer = GrowingLayer()
        layer.replace(keys, values)
        cache.layers.append(layer)
    return cache
