"""The API path of `bench_chat --api` (issue #12).

The same load as the WebSocket path, through POST /v1/chat/completions:
one client per bench user, each with an API key of its own (made for the
run and revoked after it), all sending their request at once, streamed,
with no sampling values, so that the site's defaults apply as they do to
the chat, and both paths sample alike. The client is the `openai` package the openai backend already
uses, as the people who call the API would. Each client opens its
connection (GET /v1/models) before the clock starts, as the WebSocket path
opens its sockets first.
"""

import asyncio
import statistics
import time
from dataclasses import dataclass

import openai

from generation.management.commands.bench_engine import prompt
from generation.services import api_key_create, api_key_revoke
from generation.stats import summarize

KEY_NAME = "bench_chat"
REPLY_TIMEOUT_S = 600


@dataclass
class ApiReply:
    """What one API client saw of its request; times are perf_counter seconds.
    `error` is the OpenAI error code (or a word for a transport failure),
    None when the reply ended with a finish reason."""

    sent_at: float
    first_token_at: float | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


def bench_api_keys(usernames: list[str]) -> list[tuple]:
    """A fresh API key for each bench user, in order: (ApiKey, token) pairs.
    Revoke them with `revoke_bench_api_keys` when the run ends."""
    from django.contrib.auth import get_user_model

    users = get_user_model().objects.in_bulk(usernames, field_name="username")
    return [api_key_create(user=users[name], name=KEY_NAME) for name in usernames]


def revoke_bench_api_keys(keys: list[tuple]) -> None:
    """Revoke the keys `bench_api_keys` made, so that none outlives the run."""
    for api_key, _ in keys:
        api_key_revoke(api_key=api_key)


def client_for(base_url: str, token: str) -> openai.AsyncOpenAI:
    """An SDK client on the site at `base_url` (http://host:port) with `token`;
    no retries, so that a refusal counts as an error, not as a slow reply."""
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key=token,
        max_retries=0,
        timeout=openai.Timeout(REPLY_TIMEOUT_S, connect=30),
    )


def error_code(error: openai.APIError) -> str:
    """The OpenAI error's `code` (or `type`), else a word for what failed."""
    body = error.body if isinstance(error.body, dict) else {}
    if isinstance(body.get("error"), dict):  # an HTTP error's body holds {"error": {...}}
        body = body["error"]
    code = body.get("code") or body.get("type")
    if code:
        return str(code)
    if isinstance(error, openai.APIStatusError):
        return f"http_{error.status_code}"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    return "stream_error"


async def api_reply(client: openai.AsyncOpenAI, model: str, messages: list[dict]) -> ApiReply:
    """Ask for a streamed reply to `messages` and read it to its end, as an
    OpenAI client does: token counts from the usage chunk."""
    reply = ApiReply(sent_at=time.perf_counter())
    chunks = 0
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta.content:
                    chunks += 1
                    if reply.first_token_at is None:
                        reply.first_token_at = time.perf_counter()
                reply.finish_reason = choice.finish_reason or reply.finish_reason
            if chunk.usage is not None:
                reply.completion_tokens = chunk.usage.completion_tokens
    except openai.APIError as error:
        reply.error = error_code(error)
        return reply
    if reply.finish_reason is None:
        reply.error = "no_finish_reason"
    reply.completion_tokens = reply.completion_tokens or chunks
    return reply


async def served_model(client: openai.AsyncOpenAI) -> str:
    """The id GET /v1/models lists first (the site serves one model)."""
    page = await client.models.list()
    return page.data[0].id


async def run_api_level(bases: list[str], tokens: list[str], clients: int) -> dict:
    """`clients` API clients, spread round-robin over the sites at `bases`
    (http://host:port), each with its own key from `tokens`, send at once;
    their figures, in the shape of bench_chat's WebSocket rows (queue wait
    is not in an API answer: None)."""
    sessions = [client_for(bases[i % len(bases)], tokens[i]) for i in range(clients)]
    try:
        # Opens each client's connection before the clock starts.
        models = await asyncio.gather(*(served_model(client) for client in sessions))
        started = time.perf_counter()
        replies = await asyncio.wait_for(
            asyncio.gather(*(api_reply(client, models[i], prompt(i)) for i, client in enumerate(sessions))),
            REPLY_TIMEOUT_S,
        )
        wall = time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.close() for client in sessions))
    done = [r for r in replies if r.error is None]
    errors = [r.error for r in replies if r.error is not None]
    tokens_out = sum(r.completion_tokens for r in done)
    ttfts = [(r.first_token_at - r.sent_at) * 1000 for r in done if r.first_token_at]
    ttft = summarize(ttfts)
    return {
        "clients": clients,
        "completion_tokens": tokens_out,
        "wall_s": round(wall, 2),
        "aggregate_tok_s": round(tokens_out / wall, 1),
        "ttft_p50_ms": None if ttft["p50"] is None else round(ttft["p50"]),
        "ttft_p95_ms": None if ttft["p95"] is None else round(ttft["p95"]),
        "queue_wait_p50_ms": None,
        "queue_wait_p95_ms": None,
        "mean_reply_tokens": round(statistics.mean(r.completion_tokens for r in done), 1) if done else 0,
        "errors": {code: errors.count(code) for code in sorted(set(errors))},
        "request_ids": [],
    }


def comparison_rows(rows: list[dict]) -> list[dict]:
    """Per client count (and scope, with --processes): the two paths'
    aggregate tok/s and the API's over the WebSocket's."""
    by = {}
    for row in rows:
        by.setdefault((row.get("scope"), row["clients"]), {})[row["path"]] = row["aggregate_tok_s"]
    compared = []
    for (scope, clients), paths in by.items():
        ws, api = paths.get("ws"), paths.get("api")
        ratio = round(api / ws, 3) if ws and api is not None else None
        row = {"clients": clients, "ws_tok_s": ws, "api_tok_s": api, "api_over_ws": ratio}
        compared.append({"scope": scope, **row} if scope else row)
    return compared
