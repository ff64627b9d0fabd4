"""`manage.py bench_engine`: continuous batching against the interleave baseline.

Both strategies run in one process, on the configured model (the bundled
SmolLM2 by default) and the same prompts, through the real generation
service: for each concurrency C, C requests are submitted at once with the
cap at C, and each generates exactly --new-tokens tokens, after one
untimed warm-up request. It prints a table
and can write the figures as JSON for docs/benchmarks.md.

Requests sample as the chat's do (the site's defaults: README, "Sampling")
unless --temperature, --top-p or --repetition-penalty say otherwise;
`--temperature 0 --repetition-penalty 1` is the greedy path without penalty.

Other modes (issue #14; docs/benchmarks.md has the figures):

- `--workload mixed`: multi-turn conversations arriving over time, with an
  occasional long paste, per engine configuration (`baseline`, `chunked`,
  `reuse`, `chunked+reuse`), each in a process of its own
  (generation.management.mixed_workload and mixed_configs).
- `--vs-openai URL`: the same prompts and budget also sent to an
  OpenAI-compatible server, side by side (generation.management.vs_openai).
- `--profile-step N`: where the time of one decode step at N sequences goes
  (generation.management.step_profile).
- `--threads N` sets torch's thread count first (GENERATION_TORCH_THREADS
  for the mixed workload's children).
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from generation.management.mixed_configs import add_mixed_arguments
from generation.runtime.backends.local import LocalBackend
from generation.runtime.service import GenerationService
from generation.runtime.types import Done, Error, Limits, ModelState, Token
from generation.stats import percentile

TOPICS = [
    "a lighthouse keeper",
    "the history of bread",
    "a robot learning to paint",
    "how rivers shape valleys",
    "a chess tournament",
    "life on a space station",
    "the first winter of a fox cub",
    "a city built on water",
]


def prompt(index: int) -> list[dict]:
    """The index-th benchmark prompt; lengths vary a little, as in real use."""
    topic = TOPICS[index % len(TOPICS)]
    return [{"role": "user", "content": f"Write a long, detailed story about {topic} (part {index + 1})."}]


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_one(
    strategy: str, concurrency: int, new_tokens: int, load, sampling: dict | None = None
) -> dict:
    """Run `concurrency` requests at once through a fresh service; return its
    figures. `sampling`: SamplingParams values (temperature, top_p,
    repetition_penalty) for every request; unset ones take the defaults."""
    service = GenerationService(
        backend=LocalBackend(load, strategy),
        limits=Limits(max_concurrency=concurrency, max_queue_size=concurrency, max_new_tokens=new_tokens),
    )
    service.start()
    try:
        while service.model_state is ModelState.LOADING:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        handles = [
            service.submit(
                user_id=i, messages=prompt(i), max_new_tokens=new_tokens, ignore_eos=True, **(sampling or {})
            )
            for i in range(concurrency)
        ]
        results = await asyncio.gather(*(drain(handle, started) for handle in handles))
        wall = time.perf_counter() - started
    finally:
        service.stop()
    tokens = sum(r["tokens"] for r in results)
    ttfts = [r["ttft_ms"] for r in results]
    return {
        "strategy": strategy,
        "concurrency": concurrency,
        "new_tokens": new_tokens,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "aggregate_tok_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(percentile(ttfts, 50)),
        "ttft_p95_ms": round(percentile(ttfts, 95)),
        "per_request_tok_s": round(statistics.mean(r["tok_s"] for r in results), 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }


async def drain(handle, started: float) -> dict:
    """Consume one request's events; return its token count and timings."""
    first_token = None
    async for event in handle:
        if isinstance(event, Token) and first_token is None:
            first_token = time.perf_counter()
        if isinstance(event, Error):
            raise RuntimeError(f"benchmark request failed: {event.code}: {event.message}")
    finished = time.perf_counter()
    assert isinstance(event, Done)
    tokens = event.usage.completion_tokens
    return {
        "tokens": tokens,
        "ttft_ms": (first_token - started) * 1000,
        "tok_s": tokens / (finished - started),
    }


class Command(BaseCommand):
    help = "Benchmark the batched engine against the interleave baseline."

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", default="1,4,8,16", help="Comma-separated, e.g. 1,4,8,16.")
        parser.add_argument("--new-tokens", type=int, help="Tokens per reply; default 128 (mixed: 64).")
        parser.add_argument("--strategies", default="batched,interleave")
        parser.add_argument("--json", dest="json_path", help="Write the results to this file.")
        parser.add_argument("--temperature", type=float, help="0 is greedy; default: the site's.")
        parser.add_argument("--top-p", type=float, help="Default: the site's.")
        parser.add_argument("--repetition-penalty", type=float, help="1 is off; default: the site's.")
        parser.add_argument("--threads", type=int, help="torch threads (default: GENERATION_TORCH_THREADS).")
        parser.add_argument("--workload", choices=["burst", "mixed"], default="burst")
        add_mixed_arguments(parser)
        parser.add_argument("--vs-openai", metavar="URL", help="Also an OpenAI-compatible server (…/v1).")
        parser.add_argument("--api-key", default="none", help="The server's key, for --vs-openai.")
        parser.add_argument("--openai-model", help="The served model (default: the first it lists).")
        parser.add_argument(
            "--profile-step", type=int, metavar="N", help="Profile decode steps at N sequences."
        )
        parser.add_argument("--steps", type=int, default=30, help="Decode steps timed by --profile-step.")
        parser.add_argument("--torch-profile", action="store_true", help="Also list torch's top operators.")
        parser.add_argument("--child-workload", help=argparse.SUPPRESS)  # mixed_configs' child

    def handle(self, *args, **options):
        if options["workload"] == "mixed":
            return self._mixed(options)
        # Imported here: queueadmin's bench_chat imports this module for its prompts and
        # never runs the model, so it should not pay for importing torch.
        import torch

        from generation.runtime.loading import shared_model

        threads = options["threads"] or settings.GENERATION_TORCH_THREADS
        if threads:
            torch.set_num_threads(threads)
        if options["profile_step"]:
            return self._profile(options)
        options["new_tokens"] = options["new_tokens"] or 128
        levels = [int(level) for level in options["concurrency"].split(",")]
        sampling = {
            name: options[name]
            for name in ("temperature", "top_p", "repetition_penalty")
            if options[name] is not None
        }
        strategies = options["strategies"].split(",")
        cache_dir = settings.GENERATION_CACHE_DIR
        loaded = shared_model(settings.GENERATION_MODEL, settings.GENERATION_DEVICE, cache_dir)

        def load():
            return loaded  # every run shares the one replica

        # One untimed request first, so that one-time start-up costs (CUDA
        # context, kernel selection, allocator growth) fall on no table row.
        asyncio.run(run_one(strategies[0], 1, 8, load))
        rows = []
        for strategy in strategies:
            for level in levels:
                row = asyncio.run(run_one(strategy, level, options["new_tokens"], load, sampling))
                rows.append(row)
                self.stderr.write(f"  done: {strategy} x{level}: {row['aggregate_tok_s']} tok/s")
        self._print_table(rows)
        server_rows = []
        if options["vs_openai"]:
            server_rows = self._vs_openai(
                options, levels, sampling, [r for r in rows if r["strategy"] == "batched"]
            )
        if options["json_path"]:
            report = {
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(),
                    "device": str(loaded.device),
                    "gpu": torch.cuda.get_device_name() if loaded.device.type == "cuda" else None,
                    "torch": torch.__version__,
                },
                "model": loaded.name,
                "sampling": sampling or "the site's defaults",
                "results": rows,
                **({"server": options["vs_openai"], "server_results": server_rows} if server_rows else {}),
                "load_after": [round(value, 2) for value in os.getloadavg()],
            }
            with open(options["json_path"], "w") as handle:
                json.dump(report, handle, indent=2)

    def _mixed(self, options) -> None:
        """`--workload mixed`: the parent runs each configuration in a child
        process; the child (`--child-workload`) runs one."""
        from generation.management import mixed_configs

        if options["child_workload"]:
            mixed_configs.run_in_child(options["child_workload"], options["json_path"])
            return
        report = mixed_configs.run_configurations(
            mixed_configs.workload_from(options),
            options["configs"].split(","),
            chunk_tokens=options["chunk_tokens"],
            prefix_cache_mb=options["prefix_cache_mb"],
            threads=options["threads"],
            progress=self.stderr.write,
        )
        for line in mixed_configs.table(report):
            self.stdout.write(line)
        if options["json_path"]:
            with open(options["json_path"], "w") as handle:
                json.dump(report, handle, indent=2)

    def _vs_openai(self, options, levels: list[int], sampling: dict, engine_rows: list[dict]) -> list[dict]:
        """The server's rows at each level, printed beside the engine's."""
        from generation.management.vs_openai import openai_level, side_by_side

        rows = []
        for level in levels:
            row = asyncio.run(
                openai_level(
                    options["vs_openai"],
                    options["api_key"],
                    options["openai_model"],
                    level,
                    options["new_tokens"],
                    sampling,
                )
            )
            rows.append(row)
            self.stderr.write(f"  done: server x{level}: {row['aggregate_tok_s']} tok/s")
        for line in side_by_side(engine_rows, rows):
            self.stdout.write(line)
        return rows

    def _profile(self, options) -> None:
        """`--profile-step N`: one decode step's time by section."""
        from generation.management.step_profile import profile_step
        from generation.runtime.loading import shared_model

        loaded = shared_model(
            settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
        )
        result = profile_step(loaded, options["profile_step"], options["steps"], options["torch_profile"])
        self.stdout.write(f"{result['sequences']} sequences, {result['torch_threads']} threads: ")
        self.stdout.write(f"step {result['step_ms']} ms ({result['tok_s']} tok/s)")
        for section, value in result["sections_ms"].items():
            self.stdout.write(f"  {section}: {value} ms ({result['shares'][section]:.0%})")
        for op in result.get("top_ops", []):
            self.stdout.write(f"  {op['op']}: {op['self_ms_per_step']} ms/step, {op['calls_per_step']} calls")
        if options["json_path"]:
            with open(options["json_path"], "w") as handle:
                json.dump({"model": loaded.name, **result}, handle, indent=2)

    def _print_table(self, rows: list[dict]) -> None:
        columns = ["strategy", "concurrency", "aggregate_tok_s", "ttft_p50_ms", "ttft_p95_ms"]
        columns += ["per_request_tok_s", "peak_rss_mb"]
        self.stdout.write(" | ".join(columns))
        for row in rows:
            self.stdout.write(" | ".join(str(row[column]) for column in columns))
        by_key = {(row["strategy"], row["concurrency"]): row["aggregate_tok_s"] for row in rows}
        for level in sorted({row["concurrency"] for row in rows}):
            if ("batched", level) in by_key and ("interleave", level) in by_key:
                ratio = by_key[("batched", level)] / by_key[("interleave", level)]
                self.stdout.write(f"batched / interleave at {level}: {ratio:.2f}x")
