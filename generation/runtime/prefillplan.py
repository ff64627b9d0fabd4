"""Which waiting prompts the ragged engine prefills in a step, and how many
tokens of each (its prefill budget per step).

The ragged engine (generation.runtime.ragged) asks its policy once per step
(`plan`), before the forward pass, and tells it afterwards how long the step
took (`observe`). Two policies:

- `FixedChunks` ("fixed", the first design): `chunk` prompt tokens per step in
  all, oldest prompt first. A running reply waits about one chunk between
  two tokens, but under sustained load the queue of prompts drains at
  `chunk` tokens per step whatever the step costs: 64 tokens per 220 ms
  step at 16 replies, about 290 tokens/s (docs/benchmarks.md, "The full
  default workload after the ragged batch": TTFT p50 10.6 s, p95 44 s).
- `TimedBudget` ("timed", the default): a time budget per step. A step that
  carries prefill may take about `stretch` times what the same step without
  prefill takes (learned from measured steps, `StepCosts`), so a step with
  many decoding rows, already long, affords proportionally more prompt
  tokens: a gap between two tokens of a running reply stays within about
  `stretch` normal gaps, while the prompts drain faster the more replies
  run. Between `chunk` (the floor, also used until the costs are known) and
  `MAX_CHUNKS` chunks. The waiting prompts go shortest remaining first, so a
  short turn does not queue behind a 3,000-token paste; a prompt's
  remaining count is lowered by `chunk` tokens for every step it has
  waited, so any prompt reaches the front in at most about left / chunk
  steps (no starvation), and a prompt ahead of a shorter one (by its age)
  takes at most half the budget before the others (vLLM V1's scheduler caps a long
  prefill the same way, `long_prefill_token_threshold`, within its per-step
  `max_num_batched_tokens` token budget: vllm/v1/core/sched/scheduler.py).

With no reply decoding, both prefill the first prompt (in their order)
whole: nobody waits for it, and chunks would only cost it time.

This module imports no torch: it is plain arithmetic on counts and seconds.
"""

import statistics
from collections import deque
from typing import Protocol

MAX_CHUNKS = 8  # TimedBudget's ceiling: 512 tokens per step at the default chunk of 64
WINDOW = 64  # steps kept for the cost fit: some 10-20 s of steps on this CPU
# Ridge terms, small beside real spreads: with one row count (or one token
# count) in the window they make that slope 0 instead of undefined.
ROWS_PRIOR = 0.5  # rows²
TOKENS_PRIOR = 1.0  # tokens²


class Waiting(Protocol):
    """A waiting prompt as the policies see it (the engine's `_Prefill`)."""

    left: int  # prompt tokens not prefilled yet
    waited: int  # steps it has waited so far


class FixedChunks:
    """`chunk` prompt tokens per step in all, oldest first (see the module)."""

    def __init__(self, chunk: int):
        self.chunk = chunk

    def plan(self, waiting: list, rows: int) -> list[tuple]:
        """The (prompt, tokens) pieces of this step, given the waiting prompts
        oldest first and the number of decoding `rows`."""
        budget = self.chunk
        if waiting and not rows:
            budget = max(budget, waiting[0].left)
        return _fill(waiting, budget, cap=budget)

    def observe(self, rows: int, tokens: int, seconds: float) -> None:
        """A step's measured time; this policy does not use it."""


class StepCosts:
    """What a step of the engine costs, learned from measured steps: a
    least-squares fit of seconds = a + b·rows + c·tokens (decoding rows,
    prompt tokens) over the last WINDOW steps of every kind, so that steps
    with prefill keep it current while prompts wait for long. Ridge terms
    (ROWS_PRIOR, TOKENS_PRIOR) keep it defined when the steps do not tell
    the terms apart: one row count seen predicts that step's cost for every
    count (flat: the smaller budget, the safe side). `decode_s(rows)` is
    a + b·rows, `token_s` c; both None until known (c None too when the fit
    finds no positive cost per token)."""

    def __init__(self):
        self.steps: deque[tuple[int, int, float]] = deque(maxlen=WINDOW)
        self._fit: tuple[float, float, float] | None = None  # of the window as it is
        self._last: tuple[float, float, float] | None = None  # the latest fit made

    def observe(self, rows: int, tokens: int, seconds: float) -> None:
        """Record one step: `rows` decoding rows, `tokens` prompt tokens, its time."""
        self.steps.append((rows, tokens, seconds))
        self._fit = None

    def fit(self) -> tuple[float, float, float] | None:
        """(a, b, c) in seconds, seconds per row and per token: from the
        window, or the last fit while the window's steps all carry the same
        number of prompt tokens (the per-token cost unseen); None before.
        Steps far off the first fit (over 3 median absolute residuals, and
        1 ms: a collection, another process taking the cores) are left out
        of a second, the one used."""
        if self._fit is None and len({t for _, t, _ in self.steps}) > 1:
            first = _least_squares(self.steps)
            residuals = [abs(s - first[0] - first[1] * r - first[2] * t) for r, t, s in self.steps]
            limit = 3 * statistics.median(residuals) + 0.001
            kept = [step for step, residual in zip(self.steps, residuals, strict=True) if residual <= limit]
            self._fit = _least_squares(kept) if len({t for _, t, _ in kept}) > 1 else first
            self._last = self._fit
        return self._fit or self._last

    def decode_s(self, rows: int) -> float | None:
        """Predicted seconds of a step of `rows` decoding rows and no prefill."""
        fit = self.fit()
        return None if fit is None else max(fit[0] + max(fit[1], 0.0) * rows, 0.0)

    @property
    def token_s(self) -> float | None:
        """Seconds one prompt token adds to a step (None: not known)."""
        fit = self.fit()
        return None if fit is None or fit[2] <= 0 else fit[2]


class TimedBudget:
    """A time budget per step, shortest remaining prompt first (see the
    module). `chunk`: the floor of tokens per step while replies decode, and
    the ageing in tokens per step waited. `stretch`: how many times a
    decode-only step's time a step with prefill may take (2: a gap up to
    about twice the normal one). `costs`: the cost model (a StepCosts;
    tests pass one filled with synthetic steps)."""

    def __init__(self, chunk: int, stretch: float = 2.0, costs: StepCosts | None = None):
        if chunk <= 0 or stretch < 1:
            raise ValueError("TimedBudget needs a chunk above 0 and a stretch of 1 or more.")
        self.chunk = chunk
        self.stretch = stretch
        self.costs = costs or StepCosts()

    def budget(self, rows: int) -> int:
        """Prompt tokens a step with `rows` decoding rows may carry: the
        prefill time (stretch - 1) x decode_s(rows), over token_s, between
        `chunk` and MAX_CHUNKS chunks; `chunk` while the costs are unknown."""
        decode_s, token_s = self.costs.decode_s(rows), self.costs.token_s
        if decode_s is None or token_s is None:
            return self.chunk
        tokens = (self.stretch - 1) * decode_s / max(token_s, 1e-9)
        return int(min(max(tokens, self.chunk), MAX_CHUNKS * self.chunk))

    def order(self, waiting: list) -> list:
        """The waiting prompts by remaining tokens less `chunk` per step
        waited, arrival order breaking ties."""
        return sorted(waiting, key=lambda prefill: prefill.left - self.chunk * prefill.waited)

    def plan(self, waiting: list, rows: int) -> list[tuple]:
        """The (prompt, tokens) pieces of this step (see the module)."""
        ordered = self.order(waiting)
        budget = self.budget(rows)
        if ordered and not rows:
            budget = max(budget, ordered[0].left)
            return _fill(ordered, budget, cap=budget)
        # A prompt ahead of a shorter one (there by its age) takes at most
        # half the budget before the others had theirs.
        shortest = min((prefill.left for prefill in ordered), default=0)
        return _fill(ordered, budget, cap=max(self.chunk, budget // 2), uncapped=shortest)

    def observe(self, rows: int, tokens: int, seconds: float) -> None:
        """A step's measured time: `rows` decoding rows, `tokens` prompt tokens."""
        self.costs.observe(rows, tokens, seconds)


def _least_squares(steps) -> tuple[float, float, float]:
    """(a, b, c) minimising the squared error of seconds = a + b·rows +
    c·tokens over (rows, tokens, seconds) `steps`, plus the ridge terms."""
    mean_r = statistics.fmean(r for r, _, _ in steps)
    mean_t = statistics.fmean(t for _, t, _ in steps)
    mean_s = statistics.fmean(s for _, _, s in steps)
    centred = [(r - mean_r, t - mean_t, s - mean_s) for r, t, s in steps]
    srr = sum(r * r for r, _, _ in centred) + ROWS_PRIOR
    stt = sum(t * t for _, t, _ in centred) + TOKENS_PRIOR
    srt = sum(r * t for r, t, _ in centred)
    srs = sum(r * s for r, _, s in centred)
    sts = sum(t * s for _, t, s in centred)
    det = srr * stt - srt * srt  # > 0 (Cauchy-Schwarz, and both priors are positive)
    b = (srs * stt - sts * srt) / det
    c = (sts * srr - srs * srt) / det
    return mean_s - b * mean_r - c * mean_t, b, c


def _fill(ordered: list, budget: int, cap: int, uncapped: int = 0) -> list[tuple]:
    """Share `budget` tokens among the prompts in order: first at most `cap`
    each (but a prompt of at most `uncapped` tokens left takes what it
    needs), then what is left in the same order. Returns (prompt, tokens)
    pieces in that order, each prompt once."""
    sizes: dict[int, int] = {}
    for first_pass in (True, False):
        for index, prefill in enumerate(ordered):
            if budget <= 0:
                break
            limit = cap if first_pass and prefill.left > uncapped else prefill.left
            size = min(budget, limit - sizes.get(index, 0), prefill.left - sizes.get(index, 0))
            if size > 0:
                sizes[index] = sizes.get(index, 0) + size
                budget -= size
    return [(ordered[index], sizes[index]) for index in sorted(sizes)]


def make_policy(name: str, chunk: int, stretch: float = 2.0) -> FixedChunks | TimedBudget:
    """The policy named `name` ("fixed" or "timed") with its chunk (tokens)
    and stretch; raises ValueError for another name."""
    if name == "fixed":
        return FixedChunks(chunk)
    if name == "timed":
        return TimedBudget(chunk, stretch)
    raise ValueError(f"Unknown prefill policy {name!r}; use 'fixed' or 'timed'.")
