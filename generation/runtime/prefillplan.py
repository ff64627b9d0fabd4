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
DECODE_WINDOW = 64  # decode-only steps kept for the decode cost fit
PREFILL_WINDOW = 32  # steps with prefill kept for the per-token cost
ROWS_PRIOR = 4.0  # rows²: pulls the per-row slope to 0 until several row counts were seen


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
    """What a step of the engine costs, learned from measured steps:
    `decode_s(rows)`, seconds of a step with `rows` decoding rows and no
    prefill (a least-squares line a + b·rows over the last DECODE_WINDOW
    such steps, its slope pulled towards 0 by ROWS_PRIOR so that a single
    row count seen predicts a flat cost, the safe side), and `token_s`,
    seconds per prompt token in a step (the median, over the last
    PREFILL_WINDOW steps with prefill, of what the step took beyond
    `decode_s(rows)`, per prompt token). None until known."""

    def __init__(self):
        self.decode_steps: deque[tuple[int, float]] = deque(maxlen=DECODE_WINDOW)
        self.per_token: deque[float] = deque(maxlen=PREFILL_WINDOW)

    def observe(self, rows: int, tokens: int, seconds: float) -> None:
        """Record one step: `rows` decoding rows, `tokens` prompt tokens, its time."""
        if not tokens:
            self.decode_steps.append((rows, seconds))
        elif self.decode_steps:
            self.per_token.append(max(seconds - self.decode_s(rows), 0.0) / tokens)

    def decode_s(self, rows: int) -> float | None:
        """Predicted seconds of a decode-only step of `rows` rows."""
        if not self.decode_steps:
            return None
        mean_rows = statistics.fmean(r for r, _ in self.decode_steps)
        mean_s = statistics.fmean(s for _, s in self.decode_steps)
        spread = sum((r - mean_rows) ** 2 for r, _ in self.decode_steps)
        slope = sum((r - mean_rows) * (s - mean_s) for r, s in self.decode_steps) / (spread + ROWS_PRIOR)
        slope = max(slope, 0.0)
        return max(mean_s + slope * (rows - mean_rows), 0.0)

    @property
    def token_s(self) -> float | None:
        """Seconds one prompt token adds to a step (None: no step with prefill yet)."""
        if not self.per_token:
            return None
        return statistics.median(self.per_token)


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
