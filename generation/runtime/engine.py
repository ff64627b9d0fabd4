"""Token generation engines: the ragged batch, and the old interleave design.

An engine owns the running sequences and their KV caches. It is not thread
safe and does no scheduling: the generation service's model thread calls
`add` when a request is admitted, `step` once per engine step, and `remove`
when a request is cancelled. Both engines produce the same tokens for greedy
decoding; they differ in how many forward passes a step costs.

- `RaggedEngine` ("batched", generation.runtime.ragged) advances every
  running sequence, and prefills the next chunk of a waiting prompt, in ONE
  forward pass per step over a flattened token batch. Each sequence keeps
  its own KV (generation.runtime.seqkv): no padding, and joining or leaving
  copies nobody's cache.
- `InterleaveEngine` (generation.runtime.interleave) reproduces ChatStream's
  design, the benchmark baseline: each sequence has its own cache and a step
  runs one forward pass per sequence, round robin; chunks of a prompt are
  forward passes of their own (`prefill_step`, after each step).

Choosing tokens (repetition penalty, temperature, top-k, top-p) is
generation.runtime.sampler's, for all rows of a step at once; a reply that
loops is cut with finish reason "repetition" (generation.runtime.loops).

Prefill is whole or chunked. With `prefill_chunk_tokens` 0 (off), `add`
prefills the whole prompt in one forward pass and returns the first token,
and every running reply waits for that pass. With a chunk size, `add` only
queues the prompt, and its first token comes from a later step (ragged) or
`prefill_step` (interleave); a running reply then waits about one chunk
between two tokens, however long the prompt.

Prefix reuse (`prefix_cache_bytes` above 0): when a sequence leaves, the KV
of the tokens the model read (its prompt and reply) goes to a
`PrefixCache`; a new prompt starting with the same token ids starts from
that KV, and its prefill, whole or chunked, covers only the rest. The
ragged engine moves the KV (the store keeps the leaving sequence's block;
a conversation's next turn takes it back), the interleave engine copies it.
"""

from dataclasses import dataclass, field
from typing import Any

import torch

from generation.runtime.kvcache import cache_keyword
from generation.runtime.loops import LoopDetector
from generation.runtime.prefillplan import make_policy
from generation.runtime.prefixcache import LayerKV, PrefixCache, Reuse
from generation.runtime.sampler import TokenHistory, penalise, pick
from generation.runtime.sampling import SamplingDefaults, SamplingParams


@dataclass(frozen=True)
class TokenOutput:
    """One token produced for one sequence; `finish_reason` is set ("stop",
    "length" or "repetition") when this token ends the sequence, which has
    then left the engine."""

    seq_id: str
    token_id: int
    finish_reason: str | None = None


@dataclass
class _Sequence:
    seq_id: str
    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    cache: Any = None  # its KV: a SequenceKV (ragged) or a GrowingCache (interleave)
    length: int = 0  # tokens in this sequence's cache
    generator: torch.Generator | None = None  # its own, when it asked for a seed
    loop: LoopDetector | None = None  # None with ignore_eos: benchmarks run to their length


@dataclass
class _Prefill:
    """A prompt waiting for (the rest of) its chunked prefill."""

    sequence: _Sequence
    prompt_ids: list[int]
    # The reused prefix's KV (views of the prefix cache's entry, or the
    # entry's block taken over), put into the sequence's cache only when its
    # prefill begins: sixteen prompts admitted at once would otherwise each
    # hold a copy while they wait. (Should the entry be evicted meanwhile,
    # these views keep its block alive until then.)
    reused: Reuse = field(default_factory=lambda: Reuse(0, []))
    waited: int = 0  # engine steps it has waited so far (the prefill policy's ageing)

    @property
    def left(self) -> int:
        """Prompt tokens not prefilled yet."""
        return len(self.prompt_ids) - self.sequence.length


class Engine:
    """What both engines share: prefill, sampling and stop rules.

    Sampling draws from the engine's generator (seeded with `seed`), except
    for a sequence whose params carry a seed: it draws from a generator of
    its own, seeded with it, so that its reply depends only on its prompt,
    its params and the model, not on what else runs in the batch.

    `defaults` fill the sampling fields a request left at None (the worker
    passes the model's; without, greedy and no penalty).
    `prefix_cache_bytes`: the budget of the prefix cache (0: no reuse)."""

    prefill_in_step = False
    """True: `step` prefills waiting prompts itself (the model thread calls
    no `prefill_step`)."""

    moves_kv = False
    """True: the engine's caches are blocks the prefix cache can keep and give
    back as they are (`PrefixCache.store`'s `block`, `lookup`'s `take`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        stop_token_ids: set[int],
        seed: int = 0,
        defaults: SamplingDefaults | None = None,
        prefill_chunk_tokens: int = 0,
        prefix_cache_bytes: int = 0,
    ):
        self.model = model
        self.defaults = defaults or SamplingDefaults()
        self.device = next(model.parameters()).device
        # The forward's name for the KV cache (transformers 4.57 or 5.x).
        self.cache_keyword = cache_keyword(model)
        self.stop_token_ids = frozenset(stop_token_ids)
        # Every sequence, running or still waiting for its prefill.
        self.sequences: dict[str, _Sequence] = {}
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if prefill_chunk_tokens < 0:
            raise ValueError("prefill_chunk_tokens must be 0 (whole prompts) or more.")
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._waiting: dict[str, _Prefill] = {}  # oldest first
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        # Prompt tokens of the latest `add` whose KV came from the prefix cache.
        self.last_reused_tokens = 0

    def __len__(self) -> int:
        return len(self.sequences)

    @torch.inference_mode()
    def add(self, seq_id: str, prompt_ids: list[int], params: SamplingParams) -> TokenOutput | None:
        """Start a new sequence. Unchunked: prefill it now and return its first
        token; the sequence takes part in the following steps unless that
        token already finished it. Chunked: queue it and return None; its
        first token comes from the step (ragged) or `prefill_step`
        (interleave) that prefills its last chunk.
        Sampling fields left at None take the engine's defaults. With the
        prefix cache, the prompt's longest stored prefix is not prefilled
        again (`last_reused_tokens` says how many tokens that was)."""
        params = params.resolved(self.defaults)
        prompt_ids = list(prompt_ids)
        sequence = _Sequence(seq_id, params, prompt_ids, generator=self._generator_for(params))
        if not params.ignore_eos:
            sequence.loop = LoopDetector(sequence.generated)
        reused = self.prefix_cache.lookup(prompt_ids, take=self.moves_kv)
        self.last_reused_tokens = reused.tokens
        sequence.length = reused.tokens
        if self.prefill_chunk_tokens:
            self.sequences[seq_id] = sequence
            self._waiting[seq_id] = _Prefill(sequence, prompt_ids, reused=reused)
            return None
        # Registered only once its prefill succeeded: a failed one leaves no trace.
        output = self._prefill_whole(sequence, reused)
        self.sequences[seq_id] = sequence
        return self._retire([output])[0]

    def next_prefill(self) -> str | None:
        """The sequence whose prefill comes next (the oldest waiting prompt),
        or None when no prompt waits."""
        return next(iter(self._waiting), None)

    def prefill_left(self, seq_id: str) -> int:
        """Prompt tokens of a waiting sequence not prefilled yet."""
        return self._waiting[seq_id].left

    def remove(self, *seq_ids: str) -> None:
        """Drop sequences (cancelled, failed, or ended by a stop string)
        before the next step, all in one go; unknown ids are ignored. What the model read of them
        goes to the prefix cache."""
        self._remove(seq_ids, reusable=True)

    def _remove(self, seq_ids, reusable: bool) -> None:
        known = [seq_id for seq_id in dict.fromkeys(seq_ids) if seq_id in self.sequences]
        running = []
        for seq_id in known:
            waiting = self._waiting.pop(seq_id, None)
            if waiting is None:
                running.append(seq_id)
            elif reusable and waiting.reused.block is not None:
                # A prompt that took its conversation's entry over and left
                # before its prefill began: the entry goes back, unchanged.
                ids = waiting.prompt_ids[: waiting.reused.tokens]
                self.prefix_cache.store(ids, waiting.reused.layers, block=waiting.reused.block)
            # (Any other waiting sequence is not in the batch yet.)
        if running:
            self._leave(running, reusable)
        for seq_id in known:
            del self.sequences[seq_id]

    def clear(self) -> None:
        """Forget every sequence, e.g. after a failed forward pass left the
        caches in an unknown state (so none of it is kept for reuse)."""
        self._remove(list(self.sequences), reusable=False)

    def step(self) -> list[TokenOutput]:
        """Advance every running sequence (not those still waiting for their
        prefill) by one token; the ragged engine also prefills the next
        chunk of waiting prompts, and returns the first token of those it
        finished."""
        raise NotImplementedError

    def _prefill_whole(self, sequence: _Sequence, reused: Reuse) -> TokenOutput:
        """Prefill a whole prompt now (after the `reused` prefix's KV, whose
        length `sequence.length` holds), join the running ones, and return
        its first token (not retired yet)."""
        raise NotImplementedError

    def _leave(self, seq_ids: list[str], reusable: bool = True) -> None:
        """Take running sequences out of the batch (or their own caches);
        `reusable`: first hand their KV to the prefix cache (`_keep`)."""
        raise NotImplementedError

    def _keep(self, sequence: _Sequence, layers: list[LayerKV], block: torch.Tensor | None = None) -> None:
        """Store a leaving sequence's KV (per layer [1, heads, length, dim]
        views; `block`, the sequence's own block they view, which it gives
        up, is kept without a copy) under the ids the model read: the
        prompt and the reply but its last token, which was sampled and
        never fed."""
        if self.prefix_cache.budget_bytes and sequence.length:
            ids = (sequence.prompt_ids + sequence.generated)[: sequence.length]
            self.prefix_cache.store(ids, layers, block=block)

    def _record(self, sequence: _Sequence, token: int) -> TokenOutput:
        """Append a sampled token; say whether it finishes the sequence."""
        sequence.generated.append(token)
        reason = None
        if token in self.stop_token_ids and not sequence.params.ignore_eos:
            reason = "stop"
        elif len(sequence.generated) >= sequence.params.max_new_tokens:
            reason = "length"
        elif sequence.loop is not None and sequence.loop.push():
            reason = "repetition"
        return TokenOutput(sequence.seq_id, token, reason)

    def _retire(self, outputs: list[TokenOutput]) -> list[TokenOutput]:
        """Drop the sequences these outputs finished, all in one go."""
        finished = [output.seq_id for output in outputs if output.finish_reason]
        if finished:
            self._leave(finished)
            for seq_id in finished:
                del self.sequences[seq_id]
        return outputs

    def _generator_for(self, params: SamplingParams) -> torch.Generator | None:
        """A generator of the sequence's own when it asked for a seed and samples."""
        if params.seed is None or params.temperature <= 0:
            return None
        # manual_seed takes 64 bits; any integer seed maps onto them.
        return torch.Generator(device=self.device).manual_seed(params.seed % 2**64)

    def _sample(self, logits: torch.Tensor, sequences: list[_Sequence], seen=None) -> torch.Tensor:
        """Pick the next token ([rows] ids) for each row of `logits` ([rows, vocab]), after
        the repetition penalty of the rows that ask for one. `seen` [rows,
        width] holds the rows' reply tokens when the caller keeps them as a
        tensor (the batch does); else they are read from the sequences."""
        penalties = [s.params.repetition_penalty for s in sequences]
        if any(p != 1.0 for p in penalties) and any(s.generated for s in sequences):
            if seen is None:
                seen = TokenHistory().covering([s.generated or [0] for s in sequences], self.device)
                penalties = [p if s.generated else 1.0 for p, s in zip(penalties, sequences, strict=True)]
            factor = torch.tensor(penalties, device=self.device, dtype=logits.dtype)[:, None]
            penalise(logits, seen, factor)  # in place: the logits are this step's own
        generators = [s.generator for s in sequences]
        return pick(logits, [s.params for s in sequences], generators, self.generator)


def _engines() -> dict[str, type[Engine]]:
    # Imported here: both modules build on this one.
    from generation.runtime.interleave import InterleaveEngine
    from generation.runtime.ragged import RaggedEngine

    return {"batched": RaggedEngine, "interleave": InterleaveEngine}


def make_engine(
    strategy: str,
    model: torch.nn.Module,
    stop_token_ids: set[int],
    defaults: SamplingDefaults | None = None,
    prefill_chunk_tokens: int = 0,
    prefix_cache_bytes: int = 0,
    prefill_policy: str = "fixed",
    prefill_stretch: float = 2.0,
) -> Engine:
    """Build the engine for a strategy name ("batched" or "interleave"), with
    the sampling `defaults` of requests that leave fields at None;
    `prefill_chunk_tokens` 0 prefills each prompt whole, else in chunks:
    that many tokens, or for the ragged engine as `prefill_policy` plans
    ("fixed" or "timed", with `prefill_stretch`: generation.runtime.prefillplan);
    `prefix_cache_bytes` 0 turns prefix reuse off, else bounds the KV kept
    for it. Raises ValueError for an unknown strategy or policy."""
    engines = _engines()
    try:
        engine_class = engines[strategy]
    except KeyError:
        raise ValueError(f"Unknown generation strategy {strategy!r}; use one of {sorted(engines)}.") from None
    options = {}
    if strategy == "batched" and prefill_chunk_tokens:
        options["prefill_policy"] = make_policy(prefill_policy, prefill_chunk_tokens, prefill_stretch)
    return engine_class(
        model,
        stop_token_ids,
        defaults=defaults,
        prefill_chunk_tokens=prefill_chunk_tokens,
        prefix_cache_bytes=prefix_cache_bytes,
        **options,
    )
