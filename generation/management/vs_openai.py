"""`bench_engine --vs-openai URL`: the engine beside an OpenAI-compatible server.

The same prompts (bench_engine's stories) with the same budget go, at each
concurrency, first through this process's engine (the service and model
thread, as bench_engine's other rows) and then to the server at URL (vLLM,
or any OpenAI-compatible one, chatsite's own /v1 included), all requests of
a level at once, streamed, through the `openai` package with no retries.
Both sides ask for exactly `new_tokens` tokens: the engine with
`ignore_eos`, the server with vLLM's `ignore_eos` extra field (a server that
ignores it may end a reply early: its figures count the tokens its usage
chunk reports, never the budget). One untimed request warms each side.
"""

import asyncio
import time
from dataclasses import dataclass

import openai

from generation.management.commands.bench_engine import prompt, throughput_row

REPLY_TIMEOUT_S = 900


@dataclass
class Streamed:
    """What one streamed request saw (perf_counter seconds)."""

    sent_at: float
    first_token_at: float | None = None
    completion_tokens: int = 0
    error: str | None = None


def client_for(base_url: str, api_key: str) -> openai.AsyncOpenAI:
    """An SDK client on `base_url` (ending in /v1), with no retries, so that a
    refusal shows as an error, not as a slow reply."""
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=openai.Timeout(REPLY_TIMEOUT_S, connect=30),
    )


async def stream_one(client, model: str, messages: list[dict], new_tokens: int, sampling: dict) -> Streamed:
    """One streamed chat completion, read to its end; tokens from the usage
    chunk (else one per content chunk)."""
    reply = Streamed(sent_at=time.perf_counter())
    extra = {"ignore_eos": True}
    for name in ("top_k", "repetition_penalty"):  # vLLM's fields, outside OpenAI's schema
        if name in sampling:
            extra[name] = sampling[name]
    standard = {name: sampling[name] for name in ("temperature", "top_p") if name in sampling}
    chunks = 0
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=new_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
            **standard,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                if reply.first_token_at is None:
                    reply.first_token_at = time.perf_counter()
            if chunk.usage is not None:
                reply.completion_tokens = chunk.usage.completion_tokens
    except openai.APIError as error:
        reply.error = f"{type(error).__name__}: {error}"
    reply.completion_tokens = reply.completion_tokens or chunks
    return reply


async def served_model(client) -> str:
    """The first model the server lists (GET /models)."""
    models = await client.models.list()
    return models.data[0].id


async def openai_level(base_url: str, api_key: str, model: str | None, level: int, new_tokens: int, sampling):
    """`level` requests at once to the server; the figures in bench_engine's row shape."""
    client = client_for(base_url, api_key)
    try:
        model = model or await served_model(client)
        warm = await stream_one(client, model, prompt(0), 4, sampling)
        if warm.error:
            raise RuntimeError(f"the server at {base_url} refused the warm-up request: {warm.error}")
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(stream_one(client, model, prompt(i), new_tokens, sampling) for i in range(level))
        )
        wall = time.perf_counter() - started
    finally:
        await client.close()
    errors = [reply.error for reply in replies if reply.error]
    if len(errors) == len(replies):
        raise RuntimeError(f"every request to {base_url} failed, e.g. {errors[0]}")
    tokens = sum(reply.completion_tokens for reply in replies)
    ttfts = [(r.first_token_at - r.sent_at) * 1000 for r in replies if r.first_token_at]
    return {
        **throughput_row(f"openai ({model})", level, new_tokens, tokens=tokens, wall=wall, ttfts=ttfts),
        "per_request_tok_s": round(tokens / len(replies) / wall, 1),
        "errors": len(errors),
    }


def side_by_side(engine_rows: list[dict], openai_rows: list[dict]) -> list[str]:
    """Text lines: per concurrency, both sides' tok/s and TTFT, and the ratio."""
    lines = ["concurrency | engine tok/s | server tok/s | engine/server | engine ttft p50 | server ttft p50"]
    for ours, theirs in zip(engine_rows, openai_rows, strict=True):
        ratio = (
            ours["aggregate_tok_s"] / theirs["aggregate_tok_s"] if theirs["aggregate_tok_s"] else float("nan")
        )
        lines.append(
            f"{ours['concurrency']} | {ours['aggregate_tok_s']} | {theirs['aggregate_tok_s']} | {ratio:.2f}x"
            f" | {ours['ttft_p50_ms']} ms | {theirs['ttft_p50_ms']} ms"
        )
    return lines
