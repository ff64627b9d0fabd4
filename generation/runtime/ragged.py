"""The ragged batch engine ("batched"): one forward pass per step over a
flattened token batch, every sequence with its own KV.

A step's batch is [1, T]: one token per decoding reply, then, while prompts
wait, the next chunks of some of them, each token at its own position in
its own sequence (vLLM's varlen batches work the same way). Which prompts,
and how many tokens of each, is the prefill policy's choice
(generation.runtime.prefillplan: `prefill_chunk_tokens` in all, oldest
first, or a time budget per step, shortest first); the engine times each
step for it. The chunks ride in the decode step's forward pass, so the
weights are read once for both, and a running reply waits one such pass
between two tokens however long the prompt. On an idle server (no reply
decoding) a waiting prompt is prefilled whole in that one pass: nobody
waits for it, and chunks would only cost it time.

Each sequence keeps its KV in a block of its own (generation.runtime.seqkv),
so there is no padding anywhere: a long prompt does not widen the other
replies' caches, nor the attention of their decode steps, and a sequence
joins or leaves without copying anyone's KV. The attention loops over the
segments (generation.runtime.attention). Only the logits of each decoding
reply's token and of a prompt's last token are computed.
"""

import time

import torch

from generation.runtime.attention import RaggedBatch, Segment, ragged_forward
from generation.runtime.engine import Engine, TokenOutput, _Sequence
from generation.runtime.prefillplan import FixedChunks
from generation.runtime.prefixcache import Reuse
from generation.runtime.sampler import TokenHistory
from generation.runtime.seqkv import SequenceKV


class RaggedEngine(Engine):
    """Continuous batching over per-sequence KV: decode steps and prefill
    chunks of every running and waiting sequence in ONE forward pass per
    step (see the module's docstring). `prefill_policy` plans each step's
    prefill (a generation.runtime.prefillplan policy; None: FixedChunks of
    `prefill_chunk_tokens`, oldest first)."""

    prefill_in_step = True
    moves_kv = True

    def __init__(
        self, model: torch.nn.Module, stop_token_ids: set[int], seed: int = 0, prefill_policy=None, **options
    ):
        super().__init__(model, stop_token_ids, seed, **options)
        self.prefill_policy = prefill_policy or FixedChunks(self.prefill_chunk_tokens)
        self.rows: list[str] = []  # the decoding sequences, in the order of `history`'s rows
        self.history = TokenHistory()  # the rows' reply tokens, while one asks for a penalty

    def kv_bytes(self) -> dict[str, int]:
        """Bytes of KV each sequence holds now (spare room included), by id."""
        return {seq_id: s.cache.nbytes if s.cache is not None else 0 for seq_id, s in self.sequences.items()}

    def _prefill_whole(self, sequence: _Sequence, reused: Reuse) -> TokenOutput:
        self._give_kv(sequence, reused)
        piece = (sequence, len(sequence.prompt_ids) - sequence.length)
        logits = self._forward([], [piece])
        token = int(self._sample(logits, [sequence])[0])
        self.rows.append(sequence.seq_id)
        return self._record(sequence, token)

    @torch.inference_mode()
    def step(self) -> list[TokenOutput]:
        started_at = time.perf_counter()
        running = [self.sequences[seq_id] for seq_id in self.rows]
        pieces = self.prefill_policy.plan(list(self._waiting.values()), len(running))
        if not running and not pieces:
            return []
        for waiting, _ in pieces:
            if waiting.sequence.cache is None:
                self._give_kv(waiting.sequence, waiting.reused)
                waiting.reused = Reuse(0, [])
        logits = self._forward(running, [(waiting.sequence, size) for waiting, size in pieces])
        outputs = []
        if running:
            seen = None
            if any(s.params.repetition_penalty != 1.0 for s in running):
                seen = self.history.covering([s.generated for s in running], self.device)
            else:
                self.history.clear()
            chosen = self._sample(logits[: len(running)], running, seen)
            self.history.append(chosen)
            for sequence, token in zip(running, chosen.tolist(), strict=True):
                outputs.append(self._record(sequence, token))
        started = [waiting.sequence for waiting, _ in pieces if not waiting.left]
        if started:
            for sequence in started:
                del self._waiting[sequence.seq_id]
            chosen = self._sample(logits[len(running) :], started)
            for sequence, token in zip(started, chosen.tolist(), strict=True):
                self.rows.append(sequence.seq_id)
                outputs.append(self._record(sequence, token))
        for prefill in self._waiting.values():
            prefill.waited += 1
        # The whole step (inputs, forward, sampling): what a running reply waits.
        seconds = time.perf_counter() - started_at
        self.prefill_policy.observe(len(running), sum(size for _, size in pieces), seconds)
        return self._retire(outputs)

    def _give_kv(self, sequence: _Sequence, reused: Reuse) -> None:
        """A sequence's own KV block, with room for its whole prompt, starting
        with its `reused` prefix: the prefix cache entry's block itself when
        the sequence took it over, else a copy."""
        kv = SequenceKV.for_model(self.model)
        if reused.block is not None:
            kv.adopt(reused.block, reused.tokens)
            kv.reserve(len(sequence.prompt_ids))
        elif reused.tokens:
            kv.load(reused.layers, room=len(sequence.prompt_ids))
        else:
            kv.reserve(len(sequence.prompt_ids))
        sequence.cache = kv

    def _forward(self, decoding: list[_Sequence], pieces: list[tuple[_Sequence, int]]) -> torch.Tensor:
        """One forward pass: the last token of each `decoding` sequence, then
        the next `size` prompt tokens of each piece's sequence. Advances their
        lengths; returns the logits ([rows, vocab]) of the decoding rows and
        of the pieces that finished their prompt, in that order."""
        ids, positions, segments, keep = [], [], [], []
        for sequence in decoding:
            keep.append(len(ids))
            segments.append(Segment(sequence.cache, sequence.length, len(ids), 1))
            ids.append(sequence.generated[-1])
            positions.append(sequence.length)
        finishing = []
        for sequence, size in pieces:
            start = sequence.length
            segments.append(Segment(sequence.cache, start, len(ids), size))
            ids += sequence.prompt_ids[start : start + size]
            positions += range(start, start + size)
            if start + size == len(sequence.prompt_ids):
                finishing.append(len(ids) - 1)
        keep += finishing
        for segment in segments:
            segment.kv.reserve(segment.start + segment.count)
        logits = ragged_forward(
            self.model,
            torch.tensor([ids], device=self.device),
            torch.tensor([positions], device=self.device),
            RaggedBatch(segments),
            torch.tensor(keep, device=self.device),
            cache_keyword=self.cache_keyword,
        )
        for segment, sequence in zip(segments, [*decoding, *(s for s, _ in pieces)], strict=True):
            sequence.length += segment.count
            segment.kv.length = sequence.length
        return logits

    def _leave(self, seq_ids: list[str], reusable: bool = True) -> None:
        leaving = set(seq_ids)
        for seq_id in seq_ids:
            sequence = self.sequences[seq_id]
            if reusable and self.prefix_cache.budget_bytes and sequence.cache is not None:
                # The block goes to the store as it is: the sequence is done with it.
                self._keep(sequence, sequence.cache.layers(), block=sequence.cache.block)
            sequence.cache = None
        keep = [index for index, seq_id in enumerate(self.rows) if seq_id not in leaving]
        self.rows = [self.rows[index] for index in keep]
        if self.rows:
            self.history.keep(keep)
        else:
            self.history.clear()
