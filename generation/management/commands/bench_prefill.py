"""`manage.py bench_prefill`: what a long prompt costs the replies already running.

Measurements on the configured model (the bundled SmolLM2 by default):

- `--mode gap` (the default): 8 replies stream; once each has tokens, a
  prompt of about 3,000 tokens arrives. For each prefill chunk size (0 =
  whole-prompt prefill) it reports the longest gap between two tokens of any
  running reply while that prompt is prefilled, the median gap before it
  arrived and while it was prefilled, and the long prompt's TTFT. It runs
  through the real generation service and model thread.
- `--mode prompt`: how long building the prompt (chat template, tokenising,
  trimming to the context) takes for histories of 10, 20 and 40 turns that
  do not fit the context, on the model thread's tokenizer.
- `--mode reuse`: prefix reuse. One greedy conversation of `--turns` turns
  on an idle service with the prefix cache (`--prefix-cache-mb`, default
  the setting): each turn's TTFT and reused prompt tokens; then the last
  turn and the middle one, with the very same history, on three services
  without the cache (budget 0): their median TTFT and whether the reply
  text is the same.
- `--mode reuse-load`: `--concurrency` greedy conversations at once, each
  for `--turns` turns of replies of exactly `--reply-tokens` tokens, on one
  service with `--prefix-cache-mb`: aggregate tok/s, TTFT p50/p95, reused
  prompt tokens and the process's peak RSS (run one process per budget:
  the peak is the process's).
"""

import asyncio
import itertools
import json
import random
import resource
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
    await collect_done(handle, times)


def question(turn: int) -> str:
    """A user message of some 60-120 tokens that differs per turn."""
    rng = random.Random(turn)
    sentences = [*PARAGRAPH.split(", "), "what do you think of the plan", "and what about the budget"]
    return f"Question {turn}: " + ", ".join(rng.choices(sentences, k=rng.randint(6, 12))) + "?"


async def reuse_turns(load, prefix_cache_mb, turns: int, reply_tokens: int, history=None, only=None):
    """Play one conversation on an idle service: turn t sends the t-1 earlier
    turns (the replies as this service wrote them) and a new question. With
    `history` (turn -> messages) given, sends those turns (`only`) instead.
    Returns per turn: TTFT, prompt and reused tokens, the reply and the
    messages sent."""
    service = GenerationService(
        backend=LocalBackend(load, "batched", prefix_cache_mb=prefix_cache_mb),
        limits=Limits(max_concurrency=1, max_queue_size=1, max_new_tokens=reply_tokens),
    )
    records = {}
    service.record_listeners.append(lambda record: records.__setitem__(record.request_id, record))
    service.start()
    rows = {}
    try:
        while service.model_state is ModelState.LOADING:
            await asyncio.sleep(0.01)
        messages: list[dict] = []
        for turn in only or range(1, turns + 1):
            sent = history[turn] if history else [*messages, {"role": "user", "content": question(turn)}]
            handle = service.submit(user_id=1, messages=sent, max_new_tokens=reply_tokens, temperature=0.0)
            started, times = time.perf_counter(), []
            done = await collect_done(handle, times)
            await asyncio.sleep(0.05)  # the record follows the Done event
            record = records[handle.id]
            rows[turn] = {
                "ttft_ms": round((times[0] - started) * 1000),
                "prompt_tokens": record.prompt_tokens,
                "reused_tokens": record.cached_tokens,
                "text": done.text,
                "messages": sent,
            }
            messages = [*sent, {"role": "assistant", "content": done.text}]
    finally:
        service.stop()
    return rows


async def collect_done(handle, times: list[float]) -> Done:
    """Record the arrival time of each token event of one request, and
    return its Done event; a request that fails raises RuntimeError."""
    async for event in handle:
        if isinstance(event, Token):
            times.append(time.perf_counter())
        elif isinstance(event, Error):
            raise RuntimeError(f"benchmark request failed: {event.code}: {event.message}")
        elif isinstance(event, Done):
            return event
    raise RuntimeError("no Done event")


def reuse_rows(load, prefix_cache_mb, turns: int, reply_tokens: int) -> list[dict]:
    """`--mode reuse`: TTFT per turn with reuse, and the last and middle
    turns again without, three times (the median is `ttft_fresh_ms`)."""
    asyncio.run(reuse_turns(load, prefix_cache_mb, 2, 8))  # warm-up, not reported
    reused = asyncio.run(reuse_turns(load, prefix_cache_mb, turns, reply_tokens))
    checked = [turns // 2, turns]
    history = {turn: reused[turn]["messages"] for turn in checked}
    # Three fresh services, for the median: one fresh prefill of a long
    # prompt varies by 2x on this shared machine.
    fresh = [
        asyncio.run(reuse_turns(load, 0, turns, reply_tokens, history=history, only=checked))
        for _ in range(3)
    ]
    rows = []
    for turn, row in reused.items():
        again = [run[turn] for run in fresh] if turn in checked else []
        ttfts = sorted(run["ttft_ms"] for run in again)
        rows.append(
            {
                "turn": turn,
                "prompt_tokens": row["prompt_tokens"],
                "reused_tokens": row["reused_tokens"],
                "ttft_reuse_ms": row["ttft_ms"],
                "ttft_fresh_ms": ttfts[1] if ttfts else "",
                "ttft_fresh_all_ms": ttfts or "",
                "ratio": round(row["ttft_ms"] / ttfts[1], 3) if ttfts else "",
                "same_text": all(run["text"] == row["text"] for run in again) if again else "",
            }
        )
    return rows


async def reuse_load(load, prefix_cache_mb, concurrency: int, turns: int, reply_tokens: int) -> dict:
    """`--mode reuse-load`: `concurrency` conversations at once, `turns` each."""
    service = GenerationService(
        backend=LocalBackend(load, "batched", prefix_cache_mb=prefix_cache_mb),
        limits=Limits(max_concurrency=concurrency, max_queue_size=concurrency, max_new_tokens=reply_tokens),
    )
    records = []
    service.record_listeners.append(records.append)
    service.start()

    async def conversation(user: int) -> list[float]:
        messages, ttfts = [], []
        for turn in range(1, turns + 1):
            messages = [*messages, {"role": "user", "content": question(user * 100 + turn)}]
            handle = service.submit(
                user_id=user, messages=messages, max_new_tokens=reply_tokens, ignore_eos=True, temperature=0.0
            )
            started, times = time.perf_counter(), []
            done = await collect_done(handle, times)
            ttfts.append((times[0] - started) * 1000)
            messages = [*messages, {"role": "assistant", "content": done.text}]
        return ttfts

    try:
        while service.model_state is ModelState.LOADING:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        per_user = await asyncio.gather(*(conversation(user) for user in range(concurrency)))
        ttfts = list(itertools.chain.from_iterable(per_user))
        wall = time.perf_counter() - started
        await asyncio.sleep(0.1)
    finally:
        service.stop()
    ttfts.sort()
    return {
        "prefix_cache_mb": prefix_cache_mb,
        "concurrency": concurrency,
        "turns": turns,
        "aggregate_tok_s": round(sum(r.completion_tokens for r in records) / wall, 1),
        "ttft_p50_ms": round(ttfts[len(ttfts) // 2]),
        "ttft_p95_ms": round(ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.95))]),
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "reused_tokens": sum(r.cached_tokens for r in records),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


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
        parser.add_argument("--mode", choices=["gap", "prompt", "reuse", "reuse-load"], default="gap")
        parser.add_argument(
            "--chunks", default="0,64,128,256,512", help="Chunk sizes to try; 0 = whole prompt."
        )
        parser.add_argument("--long-tokens", type=int, default=3000)
        parser.add_argument("--turns", type=int, default=20, help="reuse modes: turns per conversation")
        parser.add_argument("--reply-tokens", type=int, default=200, help="reuse modes: reply budget")
        parser.add_argument("--concurrency", type=int, default=16, help="reuse-load: conversations at once")
        parser.add_argument(
            "--prefix-cache-mb", type=int, help="reuse modes: the budget (default GENERATION_PREFIX_CACHE_MB)"
        )
        parser.add_argument("--json", dest="json_path", help="Write the results to this file.")

    def handle(self, *args, **options):
        from generation.runtime.loading import shared_model

        loaded = shared_model(
            settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
        )
        budget = options["prefix_cache_mb"]
        budget = settings.GENERATION_PREFIX_CACHE_MB if budget is None else budget
        turns, reply_tokens = options["turns"], options["reply_tokens"]
        if options["mode"] == "prompt":
            rows = self._prompt_building(loaded)
        elif options["mode"] == "reuse":
            rows = reuse_rows(lambda: loaded, budget, turns, reply_tokens)
        elif options["mode"] == "reuse-load":
            asyncio.run(reuse_turns(lambda: loaded, budget, 2, 8))  # warm-up, not reported
            rows = [
                asyncio.run(reuse_load(lambda: loaded, budget, options["concurrency"], turns, reply_tokens))
            ]
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
