"""`manage.py bench_prefill`: what a long prompt costs the replies already running.

Two measurements, on the configured model (the bundled SmolLM2 by default):

- `--mode gap` (the default): 8 replies stream; once each has tokens, a
  prompt of about 3,000 tokens arrives. For each prefill chunk size (0 =
  whole-prompt prefill) it reports the longest gap between two tokens of any
  running reply while that prompt is prefilled, the median gap before it
  arrived and while it was prefilled, and the long prompt's TTFT. It runs
  through the real generation service and model thread.
- `--mode prompt`: how long building the prompt (chat template, tokenising,
  trimming to the context) takes for histories of 10, 20 and 40 turns that
  do not fit the context, on the model thread's tokenizer.
"""

import asyncio
import itertools
import json
import statistics
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from generation.management.commands.bench_engine import prompt as story_prompt
from generation.runtime.backends.local import LocalBackend
from generation.runtime.service import GenerationService
from generation.runtime.types import Done, Error, Limits, ModelState, Token

RUNNING = 8
PARAGRAPH = (
    "The committee met on Tuesday to review the quarterly figures, the staffing plan and the "
    "state of the old warehouse by the river, which had flooded twice since the spring. "
)


def long_message(tokenizer, tokens: int) -> list[dict]:
    """A pasted document of about `tokens` tokens and a question about it."""
    per_paragraph = len(tokenizer(PARAGRAPH, add_special_tokens=False)["input_ids"])
    text = PARAGRAPH * max(1, tokens // per_paragraph)
    return [{"role": "user", "content": f"{text}\nSummarise the document above in one sentence."}]


def history(turns: int) -> list[dict]:
    """`turns` question/answer pairs of some 300 tokens each, then a question."""
    messages = []
    for index in range(turns):
        messages.append(
            {"role": "user", "content": f"Question {index}: " + "Tell me about the weather. " * 50}
        )
        messages.append({"role": "assistant", "content": f"Answer {index}: " + "It is sunny and mild. " * 60})
    messages.append({"role": "user", "content": "And tomorrow?"})
    return messages


async def collect(handle, times: list[float]) -> None:
    """Record the arrival time of each token event of one request."""
    async for event in handle:
        if isinstance(event, Token):
            times.append(time.perf_counter())
        elif isinstance(event, Error):
            raise RuntimeError(f"benchmark request failed: {event.code}: {event.message}")
        elif isinstance(event, Done):
            return


async def gap_run(load, chunk: int, long_tokens: int) -> dict:
    """One long prompt arriving into RUNNING streaming replies, at one chunk size."""
    service = GenerationService(
        backend=LocalBackend(load, "batched", prefill_chunk_tokens=chunk),
        limits=Limits(max_concurrency=RUNNING + 1, max_queue_size=RUNNING + 1, max_new_tokens=1024),
    )
    service.start()
    try:
        while service.model_state is ModelState.LOADING:
            await asyncio.sleep(0.01)
        times = [[] for _ in range(RUNNING)]
        tasks = [
            asyncio.create_task(
                collect(
                    service.submit(user_id=i, messages=story_prompt(i), max_new_tokens=1024, ignore_eos=True),
                    t,
                )
            )
            for i, t in enumerate(times)
        ]
        while min(len(t) for t in times) < 12:  # every reply streaming in steady state
            await asyncio.sleep(0.01)
        arrived = time.perf_counter()
        long_times: list[float] = []
        messages = long_message(load().tokenizer, long_tokens)
        await collect(service.submit(user_id="long", messages=messages, max_new_tokens=4), long_times)
        first_long = long_times[0]
        await asyncio.sleep(0.5)  # a few steps after, for the gap that ends the prefill
        for task in tasks:
            task.cancel()
    finally:
        service.stop()
    before, during = [], []
    for reply in times:
        for previous, current in itertools.pairwise(reply):
            if current <= arrived and previous >= arrived - 3:
                before.append(current - previous)
            elif current > arrived and previous < first_long:
                during.append(current - previous)
    return {
        "chunk_tokens": chunk,
        "max_gap_ms": round(max(during) * 1000),
        "median_gap_before_ms": round(statistics.median(before) * 1000),
        "median_gap_during_ms": round(statistics.median(during) * 1000),
        "long_ttft_ms": round((first_long - arrived) * 1000),
    }


class Command(BaseCommand):
    help = "Measure the stall a long prompt causes (per prefill chunk size), or prompt building time."

    def add_arguments(self, parser):
        parser.add_argument("--mode", choices=["gap", "prompt"], default="gap")
        parser.add_argument(
            "--chunks", default="0,64,128,256,512", help="Chunk sizes to try; 0 = whole prompt."
        )
        parser.add_argument("--long-tokens", type=int, default=3000)
        parser.add_argument("--json", dest="json_path", help="Write the results to this file.")

    def handle(self, *args, **options):
        from generation.runtime.loading import shared_model

        loaded = shared_model(
            settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
        )
        if options["mode"] == "prompt":
            rows = self._prompt_building(loaded)
        else:
            rows = []
            asyncio.run(gap_run(lambda: loaded, 0, 200))  # warm-up, not reported
            for chunk in [int(c) for c in options["chunks"].split(",")]:
                rows.append(asyncio.run(gap_run(lambda: loaded, chunk, options["long_tokens"])))
                self.stderr.write(f"  done: chunk {chunk}")
        columns = list(rows[0])
        self.stdout.write(" | ".join(columns))
        for row in rows:
            self.stdout.write(" | ".join(str(row[column]) for column in columns))
        if options["json_path"]:
            with open(options["json_path"], "w") as handle:
                json.dump({"model": loaded.name, "mode": options["mode"], "results": rows}, handle, indent=2)

    def _prompt_building(self, loaded) -> list[dict]:
        from generation.runtime.prompt import build_prompt, prepare_tokenizer

        prepare_tokenizer(loaded.tokenizer)
        context = loaded.model.config.max_position_embeddings
        rows = []
        for turns in (10, 20, 40):
            messages = history(turns)
            started = time.perf_counter()
            prompt = build_prompt(loaded.tokenizer, messages, context, 512)
            elapsed = time.perf_counter() - started
            rows.append(
                {
                    "turns": turns,
                    "build_ms": round(elapsed * 1000, 1),
                    "prompt_tokens": len(prompt.ids),
                    "dropped_messages": prompt.dropped_messages,
                }
            )
        return rows
