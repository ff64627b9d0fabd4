"""Torch's CPU thread count for the model thread (GENERATION_TORCH_THREADS).

An integer forces the count (0 keeps torch's default: every core), set
before the model loads. "auto", the default, measures instead: the first
time a process loads a model on the CPU, the model thread times a few steps
of the real engine (`make_engine`) at each candidate count, before the
service reports ready, picks the fastest, and keeps the result in the model
cache folder (generation.runtime.threadstore), keyed by what it depends on
(CPU model, usable cores, torch and transformers versions, model, engine);
later starts with the same key reuse it without measuring. A CUDA device is
not calibrated: the CPU threads only feed it.

What is timed, per candidate (`time_engine`): SEQUENCES short prompts are
prefilled (untimed), WARMUP_STEPS decode steps are run, then DECODE_STEPS
decode steps are timed, then one step that also prefills a CHUNK_TOKENS
prompt (the default chunked-prefill size): a busy server's mix. The score is
the mean time of those steps; each candidate gets ROUNDS tries in
alternating order, and keeps its best (a burst of other work on the
machine slows one try, not the pick); a try over GIVE_UP times the fastest
so far is cut short and not repeated. The pick is the fewest threads within
TOLERANCE of the fastest: the event loop and the machine's other processes
share the cores, and a thread that buys 2% costs them a core. With
SmolLM2-135M on this project's 2-core machine at load 7, a try at one
thread took about 1.7 s and the whole calibration 4.1 s (docs/benchmarks.md,
"Torch threads").

With several processes on one host, "auto" still measures one process
alone: set an integer (cores / processes) there, as docs/deploy.md says.
"""

import datetime
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from generation.runtime import threadstore
from generation.runtime.engine import make_engine
from generation.runtime.sampling import SamplingParams

logger = logging.getLogger(__name__)

AUTO = "auto"
SEQUENCES = 8
PROMPT_TOKENS = 12
CHUNK_TOKENS = 64
WARMUP_STEPS = 2
DECODE_STEPS = 8
ROUNDS = 2
TOLERANCE = 0.05
GIVE_UP = 2.0  # a try whose decode steps take this many times the fastest's is cut short
MAX_CANDIDATE = 8
BUSY_LOAD = 1.0
"""Load average per usable core above which a measurement is not stored:
another program was running, and its pick would stick on a machine that is
quiet on other days (one under load 6-8 on this project's 2-core machine
picked 1 thread; the same machine quiet measures 2 threads at 61 ms a
decode step against 108 ms: docs/benchmarks.md, "Torch threads")."""

# Per process: the calibration each key got, so that a service restarted in
# the same process (a test's new event loop) neither reads the file nor
# measures again.
_settled: dict[str, "Calibration"] = {}


@dataclass
class Calibration:
    """The outcome for one key: the `threads` picked, the `timings` (ms per
    step, by thread count: {"step_ms", "decode_ms", "chunk_ms"}), when they
    were measured (UTC, ISO 8601), the file they are kept in (None when it
    could not be written) and whether this process `reused` them."""

    threads: int
    key: dict
    timings: dict[int, dict[str, float]] = field(default_factory=dict)
    measured_at: str = ""
    path: Path | None = None
    reused: bool = False


def force(setting: int | str) -> None:
    """Apply an integer setting (above 0) before the model loads; 0 and
    "auto" leave torch's default, which "auto" replaces after the load
    (`settle`)."""
    if setting != AUTO and setting:
        torch.set_num_threads(int(setting))


def settle(setting: int | str, loaded, cache_dir: Path, strategy: str) -> Calibration | None:
    """After the load, in the model thread: with "auto", calibrate (or reuse
    the stored pick) and set it; with an integer, nothing (`force` did)."""
    if setting != AUTO:
        return None
    return calibrate(loaded, cache_dir, strategy)


def candidates(cores: int) -> list[int]:
    """The thread counts tried with `cores` usable cores: 1 to 4, then powers
    of two and the core count itself up to MAX_CANDIDATE (past that,
    decoding a small model gains little, and the calibration would grow)."""
    top = min(cores, MAX_CANDIDATE)
    counts = set(range(1, min(top, 4) + 1)) | {n for n in (8, 16, 32) if n <= top} | {top}
    return sorted(counts)


def model_identity(model: torch.nn.Module, name: str) -> dict:
    """What names a model in the key: its label, architecture, size and dtype."""
    first = next(model.parameters())
    return {
        "name": name,
        "type": getattr(model.config, "model_type", ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(first.dtype).removeprefix("torch."),
    }


def calibrate(
    loaded, cache_dir: Path, strategy: str, *, remeasure: bool = False, progress=None
) -> Calibration | None:
    """The thread count for `loaded` (a LoadedModel) with the engine
    `strategy`, set with torch.set_num_threads: the stored one for this key,
    else measured now and stored (`remeasure`: measure anyway). None on a
    non-CPU device (nothing measured or set). `progress(line)` is told each
    step (default: the log at INFO). Blocks for seconds when it measures."""
    progress = progress or logger.info
    if loaded.device.type != "cpu":
        progress(f"Torch threads: not calibrated on {loaded.device} (auto calibrates on the CPU only)")
        return None
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    key = threadstore.calibration_key(model_identity(loaded.model, loaded.name), strategy, versions)
    key_id = threadstore.key_id(key)
    if not remeasure and key_id in _settled:
        result = _settled[key_id]
    else:
        with threadstore.exclusive(cache_dir):
            entry = None if remeasure else threadstore.lookup(cache_dir, key)
            if entry is not None:
                timings = {int(n): figures for n, figures in entry.get("timings", {}).items()}
                path = Path(cache_dir) / threadstore.STORE_NAME
                result = Calibration(entry["threads"], key, timings, entry.get("measured_at", ""), path, True)
                progress(
                    f"Torch threads: {result.threads}, as measured {result.measured_at} for this "
                    f"CPU ({key['cpu']}, {key['cores']} cores) and model (stored in {path})"
                )
            else:
                result = _measure_and_store(loaded.model, key, cache_dir, strategy, progress)
        _settled[key_id] = result
    torch.set_num_threads(result.threads)
    return result


def _measure_and_store(model, key: dict, cache_dir: Path, strategy: str, progress) -> Calibration:
    counts = candidates(key["cores"])
    progress(
        f"Torch threads: calibrating {', '.join(map(str, counts))} threads on {key['cpu']} "
        f"({key['cores']} usable cores), {strategy} engine, model {key['model']['name']}"
    )
    started = time.perf_counter()
    load = machine_load()
    timings = measure(model, strategy, counts, progress)
    threads = pick({n: figures["step_ms"] for n, figures in timings.items()})
    fastest = min(timings, key=lambda n: timings[n]["step_ms"])
    measured_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entry = {"key": key, "threads": threads, "timings": timings, "measured_at": measured_at, "load": load}
    if load > BUSY_LOAD:
        path = None
        logger.warning(
            "Torch threads: the machine was busy while measuring (load average %.1f per core, over %.1f): "
            "%d thread(s) apply to this process only, not stored; the next start measures again",
            load,
            BUSY_LOAD,
            threads,
        )
    else:
        path = threadstore.store(cache_dir, entry)
    progress(
        f"Torch threads: picked {threads} (fastest {fastest} at {timings[fastest]['step_ms']:.1f} ms/step; "
        f"fewer threads win within {TOLERANCE:.0%}), calibrated in {time.perf_counter() - started:.1f} s"
        + (f", stored in {path}" if path else "")
    )
    return Calibration(threads, key, timings, measured_at, path, False)


def machine_load() -> float:
    """The 1-minute load average per usable core, read just before a
    measurement (the model's own load counts a little: it just ran)."""
    return os.getloadavg()[0] / threadstore.usable_cores()


def measure(
    model: torch.nn.Module, strategy: str, counts: list[int], progress=None
) -> dict[int, dict[str, float]]:
    """Time the engine at each thread count (`time_engine`), ROUNDS times in
    alternating order; per count, the figures of its fastest round. A try
    over GIVE_UP times the fastest so far is cut short, and that count is
    not tried again. Leaves torch's thread count at whatever was tried
    last."""
    best: dict[int, dict[str, float]] = {}
    for round_index in range(ROUNDS):
        for threads in counts if round_index % 2 == 0 else reversed(counts):
            if best.get(threads, {}).get("cut"):
                continue  # twice the fastest is not noise: another try would only cost seconds
            fastest = min((figures["step_ms"] for figures in best.values()), default=None)
            give_up_ms = GIVE_UP * fastest if fastest else None
            figures = time_engine(model, strategy, threads, give_up_ms)
            if progress and figures.get("cut"):
                progress(
                    f"  {threads} threads: over {GIVE_UP:g}x the fastest ({figures['decode_ms']:.1f} ms); cut short"
                )
            elif progress:
                progress(
                    f"  {threads} threads: {figures['step_ms']:.1f} ms/step (decode {figures['decode_ms']:.1f} ms, "
                    f"with a {CHUNK_TOKENS}-token chunk {figures['chunk_ms']:.1f} ms)"
                )
            if threads not in best or figures["step_ms"] < best[threads]["step_ms"]:
                best[threads] = figures
    return dict(sorted(best.items()))


def time_engine(
    model: torch.nn.Module, strategy: str, threads: int, give_up_ms: float | None = None
) -> dict[str, float]:
    """One try at `threads` threads (see the module's docstring): the median
    decode step, the step with a prefill chunk, and their mean `step_ms`
    (the score), in milliseconds. Greedy, so no sampling randomness.
    `give_up_ms`: once the median of two or more decode steps (warm-up
    included) is over it, or any one step is over twice it, stop there and
    return those steps' figures with "cut" set (`step_ms` their mean,
    "chunk_ms" 0): such a count cannot win, and finishing it could take many seconds (OpenMP threads fighting
    other processes for the cores make a step tens of times slower)."""
    torch.set_num_threads(threads)
    engine = make_engine(strategy, model, set(), prefill_chunk_tokens=CHUNK_TOKENS)
    params = SamplingParams(max_new_tokens=1_000_000, temperature=0, ignore_eos=True, repetition_penalty=1)
    vocab = model.config.vocab_size
    for index in range(SEQUENCES):
        engine.add(f"calibration-{index}", _prompt(index, PROMPT_TOKENS, vocab), params)
    # Any one step (a prefill's too) over twice the limit cuts the try at
    # once: under load a hopeless count's step can take seconds. The
    # warm-up steps count toward the median's limit (not toward the figures).
    steps = []
    while engine.next_prefill() is not None:
        started = time.perf_counter()
        _advance(engine)
        if give_up_ms and 1000 * (time.perf_counter() - started) > 2 * give_up_ms:
            return _cut(engine, [time.perf_counter() - started])
    for _ in range(WARMUP_STEPS + DECODE_STEPS):
        started = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - started)
        median_ms = 1000 * statistics.median(steps)
        if give_up_ms and (1000 * steps[-1] > 2 * give_up_ms or (len(steps) >= 2 and median_ms > give_up_ms)):
            return _cut(engine, steps)
    decode = steps[WARMUP_STEPS:]
    started = time.perf_counter()
    engine.add("calibration-chunk", _prompt(SEQUENCES, CHUNK_TOKENS, vocab), params)
    _advance(engine)
    chunk = time.perf_counter() - started
    engine.clear()
    return {
        "step_ms": round(1000 * (sum(decode) + chunk) / (DECODE_STEPS + 1), 2),
        "decode_ms": round(1000 * statistics.median(decode), 2),
        "chunk_ms": round(1000 * chunk, 2),
    }


def pick(step_ms: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The fewest threads whose time is within `tolerance` of the fastest."""
    fastest = min(step_ms.values())
    return min(n for n, ms in step_ms.items() if ms <= fastest * (1 + tolerance))


def _cut(engine, steps: list[float]) -> dict:
    """The figures of a try cut short after `steps` (seconds each)."""
    engine.clear()
    return {
        "step_ms": round(1000 * statistics.mean(steps), 2),
        "decode_ms": round(1000 * statistics.median(steps), 2),
        "chunk_ms": 0.0,
        "cut": True,
    }


def _advance(engine) -> None:
    """One engine step, with the prefill the model thread would run with it."""
    engine.step()
    if not engine.prefill_in_step:
        engine.prefill_step()


def _prompt(index: int, length: int, vocab: int) -> list[int]:
    """Token ids of a made-up prompt (distinct per index, inside the
    vocabulary); the time of a step does not depend on which ids."""
    return [(1000 + 37 * index + 11 * position) % vocab for position in range(length)]
