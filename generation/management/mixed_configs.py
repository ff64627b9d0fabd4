"""The configurations of `bench_engine --workload mixed`, one process each.

The parent (`run_configurations`) starts `manage.py bench_engine` once per
configuration, as a child that runs the whole mixed workload
(generation.management.mixed_workload) with the engine's settings in its
environment, the way the service reads them: GENERATION_PREFILL_CHUNK_TOKENS
(0 = whole prompts) and GENERATION_PREFIX_CACHE_MB (0 = no prefix reuse).
A fresh process per configuration makes each peak RSS its own (the child's
ru_maxrss) and keeps one configuration's caches and allocator from helping
the next.

Prefix reuse is a setting only once the engine has it: where this build's
settings have no GENERATION_PREFIX_CACHE_MB, the `reuse` configurations are
not run, their figures are null, and the report's `run.unavailable` says
why, rather than showing baseline figures under a reuse name.
"""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from django.conf import settings

from generation.management.mixed_workload import FIGURES, Workload

CONFIGURATIONS = ("baseline", "chunked", "reuse", "chunked+reuse")
REUSE_SETTING = "GENERATION_PREFIX_CACHE_MB"
# Used when the settings leave a feature off (0) and no option names a value.
FALLBACK_CHUNK_TOKENS = 128
FALLBACK_PREFIX_CACHE_MB = 256


def reuse_available() -> bool:
    """Whether this build has prefix reuse (its setting exists)."""
    return hasattr(settings, REUSE_SETTING)


def engine_settings(name: str, chunk_tokens: int, prefix_cache_mb: int) -> dict[str, int]:
    """The engine settings of configuration `name`."""
    if name not in CONFIGURATIONS:
        raise ValueError(f"Unknown configuration {name!r}; use some of {', '.join(CONFIGURATIONS)}.")
    return {
        "GENERATION_PREFILL_CHUNK_TOKENS": chunk_tokens if "chunked" in name else 0,
        REUSE_SETTING: prefix_cache_mb if "reuse" in name else 0,
    }


def run_configurations(
    workload: Workload,
    names: list[str],
    *,
    chunk_tokens: int | None = None,
    prefix_cache_mb: int | None = None,
    threads: int | None = None,
    progress=None,
) -> dict:
    """Run the workload once per configuration, each in a child process;
    return the report: per configuration name exactly the FIGURES (null for
    a configuration that could not run), and `run` with the settings, counts
    and load average of each. `progress(line)` is told as each one ends."""
    chunk_tokens = chunk_tokens or settings.GENERATION_PREFILL_CHUNK_TOKENS or FALLBACK_CHUNK_TOKENS
    prefix_cache_mb = prefix_cache_mb or getattr(settings, REUSE_SETTING, 0) or FALLBACK_PREFIX_CACHE_MB
    threads = settings.GENERATION_TORCH_THREADS if threads is None else threads
    report: dict = {}
    run = {
        "workload": asdict(workload),
        "torch_threads": threads or "every core",
        "prefill_policy": [settings.GENERATION_PREFILL_POLICY, settings.GENERATION_PREFILL_STEP_STRETCH],
        "configurations": {},
    }
    unavailable = {}
    for name in names:
        engine = engine_settings(name, chunk_tokens, prefix_cache_mb)
        if engine[REUSE_SETTING] and not reuse_available():
            report[name] = dict.fromkeys(FIGURES)
            unavailable[name] = f"prefix reuse is not in this build (no {REUSE_SETTING} setting); not run"
            if progress:
                progress(f"  {name}: unavailable: {unavailable[name]}")
            continue
        load_before = os.getloadavg()
        child = run_child(workload, engine, threads)
        report[name] = child["figures"]
        run["configurations"][name] = {
            **engine,
            **child["counts"],
            "load_before": [round(value, 2) for value in load_before],
            "load_after": [round(value, 2) for value in os.getloadavg()],
        }
        if progress:
            progress(f"  done: {name}: {json.dumps(child['figures'])}")
    if unavailable:
        run["unavailable"] = unavailable
    report["run"] = run
    return report


def run_child(workload: Workload, engine: dict[str, int], threads: int | str) -> dict:
    """Run the workload in a fresh `manage.py bench_engine` process with the
    engine settings `engine`; return its {"figures", "counts"}. Raises
    CalledProcessError when the child fails (its output went to ours)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "chatsite.settings"),
        # The parent's model, as its settings say (a test points them at the tiny model).
        "GENERATION_MODEL": str(settings.GENERATION_MODEL),
        "GENERATION_DEVICE": str(settings.GENERATION_DEVICE),
        "GENERATION_CACHE_DIR": str(settings.GENERATION_CACHE_DIR),
        "GENERATION_TORCH_THREADS": str(threads),
        **{key: str(value) for key, value in engine.items()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as folder:
        out = Path(folder) / "figures.json"
        command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "bench_engine", "--skip-checks"]
        command += [
            "--workload",
            "mixed",
            "--child-workload",
            json.dumps(asdict(workload)),
            "--json",
            str(out),
        ]
        subprocess.run(command, env=env, cwd=settings.BASE_DIR, check=True)
        return json.loads(out.read_text())


def run_in_child(workload_json: str, out_path: str) -> None:
    """The child's side: load the configured model (GENERATION_TORCH_THREADS
    applied), run the workload once, and write {"figures", "counts"}."""
    import asyncio

    import torch

    from generation.management.mixed_workload import run_workload
    from generation.runtime import threads
    from generation.runtime.loading import shared_model

    fields = json.loads(workload_json)
    fields["turn_tokens"] = tuple(fields["turn_tokens"])
    workload = Workload(**fields)
    threads.force(settings.GENERATION_TORCH_THREADS)
    loaded = shared_model(
        settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
    )
    threads.settle(settings.GENERATION_TORCH_THREADS, loaded, settings.GENERATION_CACHE_DIR, "batched")
    result = asyncio.run(run_workload(lambda: loaded, loaded.tokenizer, workload))
    result["counts"]["model"] = loaded.name
    result["counts"]["torch_threads"] = torch.get_num_threads()
    Path(out_path).write_text(json.dumps(result, indent=2))


def table(report: dict) -> list[str]:
    """The report as text lines: one row per configuration."""
    names = [name for name in report if name != "run"]
    lines = [" | ".join(["configuration", *FIGURES])]
    for name in names:
        lines.append(" | ".join([name, *(str(report[name][figure]) for figure in FIGURES)]))
    for name, reason in report["run"].get("unavailable", {}).items():
        lines.append(f"{name}: UNAVAILABLE: {reason}")
    return lines


def add_mixed_arguments(parser) -> None:
    """bench_engine's options of the mixed workload (defaults: Workload's)."""
    defaults = Workload()
    group = parser.add_argument_group("--workload mixed")
    group.add_argument("--configs", default=",".join(CONFIGURATIONS), help="Comma-separated configurations.")
    group.add_argument("--conversations", type=int, default=defaults.conversations)
    group.add_argument("--turns", type=int, default=defaults.turns, help="The probe conversation's turns.")
    group.add_argument("--turn-tokens", default="50,300", help="User message tokens: low,high.")
    group.add_argument("--paste-every", type=int, default=defaults.paste_every, help="0: no long paste.")
    group.add_argument("--paste-tokens", type=int, default=defaults.paste_tokens)
    group.add_argument(
        "--arrival-s", type=float, default=defaults.arrival_s, help="Mean gap between openings."
    )
    group.add_argument("--think-s", type=float, default=defaults.think_s, help="Mean think time per turn.")
    group.add_argument("--cap", type=int, default=defaults.cap, help="The service's concurrency cap.")
    group.add_argument("--seed", type=int, default=defaults.seed)
    group.add_argument("--chunk-tokens", type=int, help="Chunked configs' chunk (default: the setting).")
    group.add_argument("--prefix-cache-mb", type=int, help="Reuse configs' budget (default: the setting).")


def workload_from(options: dict) -> Workload:
    """The Workload that bench_engine's options describe."""
    low, high = (int(value) for value in options["turn_tokens"].split(","))
    return Workload(
        conversations=options["conversations"],
        turns=options["turns"],
        turn_tokens=(low, high),
        new_tokens=options["new_tokens"] or Workload().new_tokens,
        paste_every=options["paste_every"],
        paste_tokens=options["paste_tokens"],
        arrival_s=options["arrival_s"],
        think_s=options["think_s"],
        cap=options["cap"],
        seed=options["seed"],
    )
