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
"""

import asyncio
import json
import platform
import resource
import statistics
import time

from django.conf import settings
from django.core.management.base import BaseCommand

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
        parser.add_argument("--new-tokens", type=int, default=128)
        parser.add_argument("--strategies", default="batched,interleave")
        parser.add_argument("--json", dest="json_path", help="Write the results to this file.")
        parser.add_argument("--temperature", type=float, help="0 is greedy; default: the site's.")
        parser.add_argument("--top-p", type=float, help="Default: the site's.")
        parser.add_argument("--repetition-penalty", type=float, help="1 is off; default: the site's.")

    def handle(self, *args, **options):
        # Imported here: queueadmin's bench_chat imports this module for its prompts and
        # never runs the model, so it should not pay for importing torch.
        import torch

        from generation.runtime.loading import shared_model

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
            }
            with open(options["json_path"], "w") as handle:
                json.dump(report, handle, indent=2)

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
