"""The mixed workload of `bench_engine --workload mixed` (issue #14), in one process.

Multi-turn conversations arrive over time, as people do: each opens after
an exponential wait, then sends turn after turn (each a user message of
50-300 tokens, after a short think time), and every turn's request carries
the whole history so far, including the replies the model actually wrote,
as the chat sends it. An occasional conversation pastes a long document
(~3,000 tokens) in one of its turns. Requests go through a real
GenerationService and the `local` backend's model thread, which read the
engine's settings (GENERATION_PREFILL_CHUNK_TOKENS,
GENERATION_PREFIX_CACHE_MB) from the environment, so that one
configuration is one process (bench_engine's parent starts one per
configuration, for its own peak RSS).

Conversation 0 is the probe: it runs all its turns but the last with the
others, and its last turn is sent alone once every other reply has ended,
for `turn20_ttft_ms` (TTFT of a long conversation's next turn on an idle
server: the figure prefix reuse should cut).

The plan is drawn from `seed` and the tokenizer only, so that every
configuration replays the same conversations at the same times. Replies are
greedy, without repetition penalty, of exactly `new_tokens` tokens
(`ignore_eos`), so that they are the same text in every configuration.
"""

import asyncio
import itertools
import random
import resource
import statistics
import time
from dataclasses import dataclass, field

from generation.runtime.backends.local import LocalBackend
from generation.runtime.service import GenerationService
from generation.runtime.types import Done, Error, Limits, ModelState, Token
from generation.stats import percentile

# The per-configuration figures; the JSON has exactly these keys per configuration.
FIGURES = (
    "aggregate_tok_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "max_gap_ms",
    "median_gap_ms",
    "turn20_ttft_ms",
    "peak_rss_mb",
)
WORDS = [
    "the",
    "river",
    "morning",
    "light",
    "station",
    "garden",
    "window",
    "letter",
    "market",
    "winter",
    "bridge",
    "quiet",
    "table",
    "story",
    "number",
    "people",
    "system",
    "water",
    "mountain",
    "paper",
    "engine",
    "music",
    "colour",
    "summer",
    "forest",
    "teacher",
    "question",
    "answer",
    "village",
    "road",
    "machine",
    "picture",
    "kitchen",
    "doctor",
    "signal",
    "harbour",
    "island",
    "library",
    "weather",
    "animal",
    "journey",
    "minute",
    "history",
    "planet",
    "silver",
    "orange",
    "simple",
    "careful",
    "bright",
    "early",
    "later",
    "often",
    "never",
    "always",
    "because",
    "before",
    "after",
    "during",
    "build",
    "carry",
    "change",
    "follow",
    "listen",
    "notice",
    "open",
    "remember",
    "share",
    "travel",
    "understand",
    "write",
]


@dataclass(frozen=True)
class Workload:
    """The shape of the mixed workload; every field has a command-line option."""

    conversations: int = 16
    turns: int = 20  # the probe's; the others have between half and all of it
    turn_tokens: tuple[int, int] = (50, 300)
    new_tokens: int = 64
    paste_every: int = 4  # every Nth conversation pastes a long document once (0: never)
    paste_tokens: int = 3000
    arrival_s: float = 2.0  # mean wait between two conversations' openings
    think_s: float = 1.0  # mean think time between a reply and the next turn
    cap: int = 16  # the service's concurrency cap
    seed: int = 14


@dataclass
class Conversation:
    """One planned conversation: when it opens, its user messages, and which
    (if any) is a long paste."""

    index: int
    opens_at: float
    messages: list[str]
    think_s: list[float]
    paste_turn: int | None = None


@dataclass
class Reply:
    """What one request saw; times are perf_counter seconds."""

    conversation: int
    turn: int
    paste: bool
    sent_at: float
    token_times: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    text: str = ""


def words_text(tokenizer, rng: random.Random, tokens: int) -> str:
    """Plain text of `tokens` tokens (give or take a few on re-tokenising), drawn from `rng`."""
    text = " ".join(rng.choice(WORDS) for _ in range(int(tokens * 1.3) + 8))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def plan(tokenizer, workload: Workload) -> list[Conversation]:
    """The conversations, drawn from `workload.seed`: the same in every run."""
    rng = random.Random(workload.seed)
    low, high = workload.turn_tokens
    conversations, opens_at = [], 0.0
    for index in range(workload.conversations):
        turns = workload.turns if index == 0 else rng.randint(max(1, workload.turns // 2), workload.turns)
        messages = [words_text(tokenizer, rng, rng.randint(low, high)) for _ in range(turns)]
        paste_turn = None
        if index and workload.paste_every and index % workload.paste_every == 0:
            paste_turn = rng.randrange(turns)
            document = words_text(tokenizer, rng, workload.paste_tokens)
            messages[paste_turn] = f"{document}\n\nWhat is the document above about?"
        think = [rng.expovariate(1 / workload.think_s) if workload.think_s else 0.0 for _ in range(turns)]
        conversations.append(Conversation(index, opens_at, messages, think, paste_turn))
        opens_at += rng.expovariate(1 / workload.arrival_s) if workload.arrival_s else 0.0
    return conversations


async def send(
    service, conversation: int, turn: int, history: list[dict], paste: bool, new_tokens: int
) -> Reply:
    """One turn's request, drained; raises on an Error event."""
    reply = Reply(conversation, turn, paste, time.perf_counter())
    handle = service.submit(
        user_id=f"conversation-{conversation}",
        messages=list(history),
        max_new_tokens=new_tokens,
        ignore_eos=True,
        temperature=0,
        repetition_penalty=1.0,
    )
    async for event in handle:
        if isinstance(event, Token):
            reply.token_times.append(time.perf_counter())
        elif isinstance(event, Error):
            raise RuntimeError(f"benchmark request failed: {event.code}: {event.message}")
        elif isinstance(event, Done):
            reply.completion_tokens = event.usage.completion_tokens
            reply.text = event.text
    return reply


async def converse(
    service, conversation: Conversation, workload: Workload, start: float, turns: int
) -> tuple:
    """Run the first `turns` turns of `conversation` from its opening time;
    return (its replies, its history so far)."""
    await asyncio.sleep(max(0.0, start + conversation.opens_at - time.perf_counter()))
    history, replies = [], []
    for turn in range(turns):
        history.append({"role": "user", "content": conversation.messages[turn]})
        paste = turn == conversation.paste_turn
        reply = await send(service, conversation.index, turn + 1, history, paste, workload.new_tokens)
        replies.append(reply)
        history.append({"role": "assistant", "content": reply.text})
        if turn < turns - 1:
            await asyncio.sleep(conversation.think_s[turn])
    return replies, history


async def run_workload(load, tokenizer, workload: Workload) -> dict:
    """Run the whole workload on a fresh service over `load`; return the figures
    (FIGURES) and the run's counts. The engine's settings come from Django's."""
    conversations = plan(tokenizer, workload)
    size = workload.conversations + 2
    service = GenerationService(
        backend=LocalBackend(load, "batched"),
        limits=Limits(
            max_concurrency=workload.cap,
            max_queue_size=size,
            max_new_tokens=max(workload.new_tokens, 8),
            queue_timeout_s=3600,
        ),
    )
    service.start()
    try:
        while service.model_state is ModelState.LOADING:
            await asyncio.sleep(0.01)
        # Untimed: one-time costs (allocator growth, first kernels) fall on no figure.
        await send(service, -1, 1, [{"role": "user", "content": "Hello."}], False, 8)
        start = time.perf_counter()
        probe, *others = conversations
        results = await asyncio.gather(
            converse(service, probe, workload, start, workload.turns - 1),
            *(converse(service, c, workload, start, len(c.messages)) for c in others),
        )
        finished = time.perf_counter()
        probe_history = results[0][1]
        probe_history.append({"role": "user", "content": probe.messages[-1]})
        last = await send(service, 0, workload.turns, probe_history, False, workload.new_tokens)
    finally:
        service.stop()
    replies = [reply for conversation_replies, _ in results for reply in conversation_replies]
    figures = measure(replies, finished - start)
    figures["turn20_ttft_ms"] = ms(last.token_times[0] - last.sent_at)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    counts = {
        "requests": len(replies) + 1,
        "pastes": sum(reply.paste for reply in replies),
        "completion_tokens": sum(reply.completion_tokens for reply in replies),
        "wall_s": round(finished - start, 1),
        "last_turn": workload.turns,
    }
    return {"figures": {name: figures[name] for name in FIGURES}, "counts": counts}


def measure(replies: list[Reply], wall_s: float) -> dict:
    """The workload's figures from its replies (all but the probe's last turn).

    Gaps are the times between two consecutive tokens of one reply.
    `max_gap_ms` is the longest gap any reply saw; `median_gap_ms` is the
    median gap outside the prefill of a long paste (from its sending to its
    first token), the normal gap that issue #14's bar compares the longest
    with; `itl_*` are percentiles of all gaps."""
    paste_windows = [(r.sent_at, r.token_times[0]) for r in replies if r.paste and r.token_times]
    gaps, normal = [], []
    for reply in replies:
        for previous, current in itertools.pairwise(reply.token_times):
            gaps.append(current - previous)
            if not any(previous < end and current > begin for begin, end in paste_windows):
                normal.append(current - previous)
    ttfts = [r.token_times[0] - r.sent_at for r in replies if r.token_times]
    tokens = sum(r.completion_tokens for r in replies)
    return {
        "aggregate_tok_s": round(tokens / wall_s, 1),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p95_ms": ms(percentile(ttfts, 95)),
        "itl_p50_ms": ms(percentile(gaps, 50)),
        "itl_p99_ms": ms(percentile(gaps, 99)),
        "max_gap_ms": ms(max(gaps, default=None)),
        "median_gap_ms": ms(statistics.median(normal) if normal else None),
    }


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds, to 0.1 ms; None stays None."""
    return None if seconds is None else round(seconds * 1000, 1)
