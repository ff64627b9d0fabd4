"""Token generation engines: continuous batching, and the old interleave design.

An engine owns the running sequences and their KV caches. It is not thread
safe and does no scheduling: the generation service's model thread calls
`add` when a request is admitted, `step` once per decode step, and `remove`
when a request is cancelled. Both engines produce the same tokens for greedy
decoding; they differ in how many forward passes a step costs.

- `BatchedEngine` keeps every running sequence in one left-padded batch and
  advances all of them with ONE forward pass per step. A new sequence is
  prefilled alone and then joins the batch at the next step boundary.
- `InterleaveEngine` reproduces ChatStream's design, the benchmark baseline:
  each sequence has its own cache and a step runs one forward pass per
  sequence, round robin.

Choosing tokens (repetition penalty, temperature, top-k, top-p) is
generation.runtime.sampler's, for all rows of a step at once; a reply that
loops is cut with finish reason "repetition" (generation.runtime.loops).

Prefill is whole or chunked. With `prefill_chunk_tokens` 0 (off), `add`
prefills the whole prompt in one forward pass and returns the first token,
and every running reply waits for that pass. With a chunk size, `add` only
queues the prompt; the model thread then calls `prefill_step` after each
decode step: forward passes over the next chunk of the oldest waiting
prompts, oldest first, into each sequence's own cache, `prefill_chunk_tokens`
tokens in all per loop (several short prompts that arrived together share
one loop's budget). So a running reply waits at most one decode step plus
one chunk between two tokens, however long the prompt. The chunk and the
decode step are two forward passes, not one mixed batch: simpler, and each
is the pass the unchunked engine already runs.

Prefix reuse (`prefix_cache_bytes` above 0): when a sequence leaves, the KV
of the tokens the model read (its prompt and reply) goes to a
`PrefixCache`; a new prompt starting with the same token ids starts from a
copy of that KV, and its prefill, whole or chunked, covers only the rest.
"""

from dataclasses import dataclass, field

import torch

from generation.runtime.kvcache import GrowingCache, GrowingLayer, cache_keyword
from generation.runtime.loops import LoopDetector
from generation.runtime.prefixcache import LayerKV, PrefixCache
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
    cache: GrowingCache | None = None  # interleave only: the batch holds the rest
    length: int = 0  # tokens in this sequence's cache
    generator: torch.Generator | None = None  # its own, when it asked for a seed
    loop: LoopDetector | None = None  # None with ignore_eos: benchmarks run to their length


@dataclass
class _Prefill:
    """A prompt waiting for (the rest of) its chunked prefill."""

    sequence: _Sequence
    prompt_ids: list[int]
    cache: GrowingCache = field(default_factory=GrowingCache)
    # The reused prefix's KV (views of the prefix cache's entry), copied into
    # `cache` only when its prefill begins: sixteen prompts admitted at once
    # would otherwise each hold a copy while they wait. (Should the entry be
    # evicted meanwhile, these views keep its block alive until then.)
    reused: list[LayerKV] = field(default_factory=list)


class Engine:
    """What both engines share: prefill, sampling and stop rules.

    Sampling draws from the engine's generator (seeded with `seed`), except
    for a sequence whose params carry a seed: it draws from a generator of
    its own, seeded with it, so that its reply depends only on its prompt,
    its params and the model, not on what else runs in the batch.

    `defaults` fill the sampling fields a request left at None (the worker
    passes the model's; without, greedy and no penalty).
    `prefix_cache_bytes`: the budget of the prefix cache (0: no reuse)."""

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
        first token comes from the `prefill_step` that prefills its last chunk.
        Sampling fields left at None take the engine's defaults. With the
        prefix cache, the prompt's longest stored prefix is not prefilled
        again (`last_reused_tokens` says how many tokens that was)."""
        params = params.resolved(self.defaults)
        prompt_ids = list(prompt_ids)
        sequence = _Sequence(seq_id, params, prompt_ids, generator=self._generator_for(params))
        if not params.ignore_eos:
            sequence.loop = LoopDetector(sequence.generated)
        reused, layers = self.prefix_cache.lookup(prompt_ids)
        self.last_reused_tokens = reused
        sequence.length = reused
        if self.prefill_chunk_tokens:
            self.sequences[seq_id] = sequence
            self._waiting[seq_id] = _Prefill(sequence, prompt_ids, reused=layers)
            return None
        cache = _cache_of(layers)
        input_ids = torch.tensor([prompt_ids[reused:]], device=self.device)
        # As in prefill_step: only the last position's logits are used.
        logits = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.cache_keyword: cache}
        ).logits
        # Registered only once its prefill succeeded: a failed one leaves no trace.
        sequence.length = len(prompt_ids)
        self.sequences[seq_id] = sequence
        return self._start(sequence, cache, logits)

    def next_prefill(self) -> str | None:
        """The sequence the next `prefill_step` works on (the oldest waiting
        prompt), or None when no prompt waits."""
        return next(iter(self._waiting), None)

    def prefill_left(self, seq_id: str) -> int:
        """Prompt tokens of a waiting sequence not prefilled yet."""
        waiting = self._waiting[seq_id]
        return len(waiting.prompt_ids) - waiting.sequence.length

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
        if waiting.reused:
            waiting.cache, waiting.reused = _cache_of(waiting.reused), []
        size = max_tokens or self.prefill_chunk_tokens
        chunk = waiting.prompt_ids[sequence.length : sequence.length + size]
        # Only the last position's logits are ever used: skip the vocabulary
        # projection of the others (a fifth of a prefill's work on SmolLM2).
        logits = self.model(
            input_ids=torch.tensor([chunk], device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_keyword: waiting.cache},
        ).logits
        sequence.length += len(chunk)
        if sequence.length < len(waiting.prompt_ids):
            return None
        del self._waiting[seq_id]
        return self._start(sequence, waiting.cache, logits)

    def _start(self, sequence: _Sequence, cache: GrowingCache, logits: torch.Tensor) -> TokenOutput:
        """A prefilled sequence joins the running ones with its first token,
        sampled from the prompt's last `logits`."""
        self._join(sequence, cache)
        token = int(self._sample(logits[:, -1, :], [sequence])[0])
        return self._retire([self._record(sequence, token)])[0]

    def remove(self, *seq_ids: str) -> None:
        """Drop sequences (cancelled, failed, or ended by a stop string)
        before the next step, all in one go (for the batch, one cache
        compaction); unknown ids are ignored. What the model read of them
        goes to the prefix cache."""
        self._remove(seq_ids, reusable=True)

    def _remove(self, seq_ids, reusable: bool) -> None:
        known = [seq_id for seq_id in dict.fromkeys(seq_ids) if seq_id in self.sequences]
        # A sequence still waiting for its prefill is not in the batch yet.
        running = [seq_id for seq_id in known if self._waiting.pop(seq_id, None) is None]
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
        prefill) by one token."""
        raise NotImplementedError

    def _join(self, sequence: _Sequence, cache: GrowingCache) -> None:
        raise NotImplementedError

    def _leave(self, seq_ids: list[str], reusable: bool = True) -> None:
        """Take running sequences out of the batch (or their own caches);
        `reusable`: first hand their KV to the prefix cache (`_keep`)."""
        raise NotImplementedError

    def _keep(self, sequence: _Sequence, layers: list[LayerKV]) -> None:
        """Store a leaving sequence's KV (per layer [1, heads, length, dim],
        views the cache copies) under the ids the model read: the prompt and
        the reply but its last token, which was sampled and never fed."""
        if self.prefix_cache.budget_bytes and sequence.length:
            ids = (sequence.prompt_ids + sequence.generated)[: sequence.length]
            self.prefix_cache.store(ids, layers)

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
        """Drop the sequences these outputs finished, all in one go (for the
        batch, one cache compaction however many end in the same step)."""
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


class BatchedEngine(Engine):
    """Continuous batching: all running sequences share one left-padded KV
    cache and advance together in one forward pass per step."""

    def __init__(self, model: torch.nn.Module, stop_token_ids: set[int], seed: int = 0, **options):
        super().__init__(model, stop_token_ids, seed, **options)
        self.cache: GrowingCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, columns]; 0 marks left padding
        self.rows: list[str] = []
        self.history = TokenHistory()  # the rows' reply tokens, while one asks for a penalty

    def _join(self, sequence: _Sequence, cache: GrowingCache) -> None:
        new_mask = torch.ones((1, sequence.length), dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask, self.rows = cache, new_mask, [sequence.seq_id]
            return
        width = max(self.mask.shape[1], sequence.length)
        for batch_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
            batch_layer.append_row(new_layer.keys, new_layer.values)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(new_mask, width)])
        self.rows.append(sequence.seq_id)

    def _leave(self, seq_ids: list[str], reusable: bool = True) -> None:
        if reusable and self.prefix_cache.budget_bytes:
            # Rows are right-aligned: a row's tokens are the last `length` columns.
            width = self.mask.shape[1]
            for index, seq_id in enumerate(self.rows):
                if seq_id in seq_ids:
                    sequence = self.sequences[seq_id]
                    start = width - sequence.length
                    layers = [
                        (layer.keys[index : index + 1, :, start:], layer.values[index : index + 1, :, start:])
                        for layer in self.cache.layers
                    ]
                    self._keep(sequence, layers)
        keep = [index for index, seq_id in enumerate(self.rows) if seq_id not in seq_ids]
        if not keep:
            self.cache, self.mask, self.rows = None, None, []
            self.history.clear()
            return
        self.history.keep(keep)
        self.rows = [self.rows[index] for index in keep]
        self.mask = self.mask[keep]
        # Columns that are padding in every remaining row only cost time: drop
        # them in the same copy as the rows that left (when a long prompt's
        # reply ends, most of the cache goes, and copying it first would stall
        # every other reply for that long).
        first_used = int(torch.nonzero(self.mask.any(dim=0))[0])
        self.mask = self.mask[:, first_used:]
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            if layer.get_seq_length() > 0:
                layer.replace(layer.keys[:, :, first_used:][index], layer.values[:, :, first_used:][index])

    @torch.inference_mode()
    def step(self) -> list[TokenOutput]:
        if not self.rows:
            return []
        sequences = [self.sequences[seq_id] for seq_id in self.rows]
        input_ids = torch.tensor([[s.generated[-1]] for s in sequences], device=self.device)
        # Each row's position is its own length: padding does not count.
        position_ids = torch.tensor([[s.length] for s in sequences], device=self.device)
        # The new token's column is the cache's width, which the model reads
        # from the cache itself (so no cache_position: 5.x dropped it, and in
        # 4.57 its default is that same column).
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(sequences), 1))], dim=1)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_keyword: self.cache},
        ).logits
        seen = None
        if any(s.params.repetition_penalty != 1.0 for s in sequences):
            seen = self.history.covering([s.generated for s in sequences], self.device)
        else:
            self.history.clear()
        chosen = self._sample(logits[:, -1, :], sequences, seen)
        self.history.append(chosen)
        tokens = chosen.tolist()
        outputs = []
        for sequence, token in zip(sequences, tokens, strict=True):
            sequence.length += 1
            outputs.append(self._record(sequence, token))
        return self._retire(outputs)


class InterleaveEngine(Engine):
    """The old design, kept as the benchmark's baseline: one forward pass per
    sequence per step, each over its own cache."""

    def _join(self, sequence: _Sequence, cache: GrowingCache) -> None:
        sequence.cache = cache

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


ENGINES = {"batched": BatchedEngine, "interleave": InterleaveEngine}


def make_engine(
    strategy: str,
    model: torch.nn.Module,
    stop_token_ids: set[int],
    defaults: SamplingDefaults | None = None,
    prefill_chunk_tokens: int = 0,
    prefix_cache_bytes: int = 0,
) -> Engine:
    """Build the engine for a strategy name ("batched" or "interleave"), with
    the sampling `defaults` of requests that leave fields at None;
    `prefill_chunk_tokens` 0 prefills each prompt whole, else in chunks of
    at most that many tokens; `prefix_cache_bytes` 0 turns prefix reuse off,
    else bounds the KV kept for it."""
    try:
        engine_class = ENGINES[strategy]
    except KeyError:
        raise ValueError(f"Unknown generation strategy {strategy!r}; use one of {sorted(ENGINES)}.") from None
    return engine_class(
        model,
        stop_token_ids,
        defaults=defaults,
        prefill_chunk_tokens=prefill_chunk_tokens,
        prefix_cache_bytes=prefix_cache_bytes,
    )


def _cache_of(layers: list[LayerKV]) -> GrowingCache:
    """A new cache holding a copy of these per-layer keys and values (none:
    an empty cache)."""
    cache = GrowingCache()
    for keys, values in layers:
        layer = GrowingLayer()
        layer.replace(keys, values)
        cache.layers.append(layer)
    return cache


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (the last for masks, the second to last for
    keys and values) with zeros up to `width`."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[axis]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)
