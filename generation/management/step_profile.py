"""`bench_engine --profile-step N`: where one decode step's time goes.

N sequences (bench_engine's story prompts, the site's sampling defaults as
the model thread layers them, `ignore_eos`) are prefilled into a batched
engine; then each of `steps` decode steps is timed in sections with
perf_counter, as the model thread runs them:

- forward: the model's forward pass (the engine's one call per step);
- sampling: the engine's `_sample` (penalty, temperature, top-k/top-p, draw);
- bookkeeping: the rest of `engine.step` (input tensors, mask, records,
  stop rules, cache compaction);
- detokenising: one IncrementalDetokenizer.push per token, as the worker
  does after each step.

With `torch_profile`, torch.profiler also records a few steps and the
operators that take most CPU time are listed (eager ops by self time).
"""

import statistics
import time

from generation.management.commands.bench_engine import prompt

SECTIONS = ("forward", "sampling", "bookkeeping", "detokenising")


class _Timed:
    """Wraps a callable and adds each call's duration to `totals[name]`."""

    def __init__(self, inner, totals: dict, name: str):
        self.inner, self.totals, self.name = inner, totals, name

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.totals[self.name] += time.perf_counter() - started

    def __getattr__(self, name):  # the engine reads model.config and the like
        return getattr(self.inner, name)


def profile_step(loaded, sequences: int, steps: int, torch_profile: bool = False) -> dict:
    """Time `steps` decode steps of `sequences` running sequences on `loaded`
    (a LoadedModel); return per-section medians (ms per step), shares, and
    with `torch_profile` the top operators."""
    import torch

    from generation.runtime.detokenizer import IncrementalDetokenizer
    from generation.runtime.engine import make_engine
    from generation.runtime.prompt import build_prompt, prepare_tokenizer
    from generation.runtime.registry import sampling_overrides
    from generation.runtime.sampling import FALLBACK, SamplingParams
    from generation.runtime.worker import stop_token_ids

    tokenizer = loaded.tokenizer
    prepare_tokenizer(tokenizer)
    defaults = sampling_overrides().layered(loaded.sampling, FALLBACK)
    engine = make_engine("batched", loaded.model, stop_token_ids(loaded), defaults)
    context = loaded.model.config.max_position_embeddings
    budget = steps * 2 + 32
    detokenizers = {}
    for index in range(sequences):
        ids = build_prompt(tokenizer, prompt(index), context, budget).ids
        seq_id = f"s{index}"
        engine.add(seq_id, ids, SamplingParams(max_new_tokens=budget, ignore_eos=True))
        detokenizers[seq_id] = IncrementalDetokenizer(tokenizer)
    for _ in range(3):  # warm: the first steps grow the allocator's pools
        engine.step()
    totals = dict.fromkeys(SECTIONS, 0.0)
    engine.model = _Timed(engine.model, totals, "forward")
    engine._sample = _Timed(engine._sample, totals, "sampling")
    per_step = {section: [] for section in SECTIONS}
    walls = []
    for _ in range(steps):
        before = dict(totals)
        started = time.perf_counter()
        outputs = engine.step()
        stepped = time.perf_counter()
        for output in outputs:
            detokenizers[output.seq_id].push(output.token_id)
        ended = time.perf_counter()
        forward = totals["forward"] - before["forward"]
        sampling = totals["sampling"] - before["sampling"]
        per_step["forward"].append(forward)
        per_step["sampling"].append(sampling)
        per_step["bookkeeping"].append(stepped - started - forward - sampling)
        per_step["detokenising"].append(ended - stepped)
        walls.append(ended - started)
    step_ms = statistics.median(walls) * 1000
    result = {
        "sequences": sequences,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "step_ms": round(step_ms, 2),
        "tok_s": round(sequences / statistics.median(walls), 1),
        "sections_ms": {s: round(statistics.median(v) * 1000, 3) for s, v in per_step.items()},
        "shares": {s: round(sum(v) / sum(walls), 3) for s, v in per_step.items()},
    }
    if torch_profile:
        result["top_ops"] = _top_ops(engine, min(steps, 10))
    return result


def _top_ops(engine, steps: int) -> list[dict]:
    """The operators with the most self CPU time over `steps` decode steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        for _ in range(steps):
            engine.step()
    events = sorted(recorded.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": event.key,
            "calls_per_step": round(event.count / steps, 1),
            "self_ms_per_step": round(event.self_cpu_time_total / 1000 / steps, 3),
            "share": round(event.self_cpu_time_total / total, 3),
        }
        for event in events[:12]
    ]
