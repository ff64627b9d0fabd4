"""One admitted request, streamed from the remote engine.

The conversation is trimmed to the engine's context exactly as the local
backend trims it (generation.runtime.prompt.build_prompt, with the remote
model's tokenizer), and the kept messages are sent: the engine applies the
chat template itself. Before counting, the spellings of control tokens in
the messages are broken (prompt.neutralise_control_tokens): the engine would
read them as control tokens. The reply streams as chat-completion chunks,
parsed by the openai package; `include_usage` asks for a last chunk with the
engine's own token counts. The request's stop strings and seed are passed
on as `stop` and `seed`: OpenAI-compatible engines apply them themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai

from generation.runtime.prompt import Prompt, build_prompt, kept_messages, neutralise_control_tokens
from generation.runtime.sampling import SamplingDefaults
from generation.runtime.types import (
    ErrorCode,
    FinishReason,
    Report,
    RequestFinished,
    RequestStarted,
    TextDelta,
)

from .remote import ModelCard


class MalformedStream(Exception):
    """The engine answered 200 with something that is not a chat-completion
    stream; `body` is what it sent (or what we saw of it), for the log."""

    def __init__(self, what: str, body: str | bytes = ""):
        super().__init__(what)
        self.body = body


class UnfinishedReply(Exception):
    """The engine ended the reply with a finish reason that is neither the
    model's own stop nor the reply budget running out: the text so far is
    not a whole reply. `reason` is the engine's word; `code` is how the
    request fails (see `finish_reason`)."""

    def __init__(self, reason: object, code: ErrorCode):
        super().__init__(f"the engine ended the reply with finish_reason {reason!r}")
        self.reason, self.code = reason, code


def finish_reason(value) -> FinishReason:
    """The engine's finish reason as ours: "stop" is the model's own stop,
    "length" the reply budget running out. Raises UnfinishedReply for any
    other word, since the reply may be cut short:

    - "abort" fails `unavailable`: vLLM 0.32 (vllm/v1/engine/core.py) aborts
      the sequences in flight when it shuts down, pauses (mode "abort") or
      recovers from a fault in its engine loop, so the engine is going away
      or busy with itself, and "try again later" is the right advice, as for
      a connection that breaks mid-reply. Our own cancel closes the stream
      first, so it never reads as an "abort" here.
    - anything else ("error", vLLM's retryable internal error, "repetition",
      "content_filter", "tool_calls", a word of some other engine) fails
      `internal`, as any answer that is not a plain reply does.
    """
    if value == "stop":
        return FinishReason.STOP
    if value == "length":
        return FinishReason.LENGTH
    raise UnfinishedReply(value, ErrorCode.UNAVAILABLE if value == "abort" else ErrorCode.INTERNAL)


def read_chunk(chunk) -> tuple[str, str | None, object | None]:
    """A chunk's (text, finish reason, usage). The openai package builds
    chunks without validating them, so their shape is checked here: each
    has a list of choices (empty in the usage chunk) whose delta may hold
    text. Raises MalformedStream otherwise."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise MalformedStream("a chunk without a list of choices", _dump(chunk))
    usage = getattr(chunk, "usage", None)
    if not choices:
        return "", None, usage
    delta = getattr(choices[0], "delta", None)
    text = getattr(delta, "content", None) if delta is not None else None
    if text is not None and not isinstance(text, str):
        raise MalformedStream("a chunk whose content is not text", _dump(chunk))
    return text or "", getattr(choices[0], "finish_reason", None), usage


def _dump(chunk) -> str:
    try:
        return chunk.to_json(indent=None)
    except Exception:
        return repr(chunk)


async def stream_reply(
    client: openai.AsyncOpenAI,
    card: ModelCard,
    tokenizer,
    request,
    report: Callable[[Report], None],
    *,
    sampling: SamplingDefaults | None = None,
) -> None:
    """Generate `request`'s reply (a GenerationRequest) on the engine,
    reporting RequestStarted once the engine answered 200, a TextDelta per
    chunk with text (counted as one token each), and RequestFinished with the
    usage chunk's counts when the engine sent one.

    Raises PromptTooLong before sending anything; openai.APIStatusError
    when the engine refused the request (429 and 503 among them);
    openai.APIConnectionError when it cannot be reached or the connection
    broke; UnfinishedReply when it ended the reply short; MalformedStream,
    json.JSONDecodeError or another openai.APIError when what came back is
    not a chat-completion stream. Cancelling the task
    closes the HTTP stream, which makes vLLM and Ollama abort the sequence.
    """
    # What the request leaves unset takes `sampling`, the backend's defaults
    # (generation.runtime.backends.openai.remote.sampling_defaults).
    params = request.params.resolved(sampling) if sampling else request.params
    # Tokenising a long conversation takes milliseconds to tens of them: off the loop.
    messages, prompt = await asyncio.to_thread(
        _prepare, tokenizer, request.messages, card.context_tokens, params.max_new_tokens
    )
    extra: dict = {"extra_body": {"ignore_eos": True}} if params.ignore_eos else {}
    # The engine applies stop strings itself (the text it streams ends before
    # one, finish_reason "stop") and seeds its own sampler (vLLM: per request).
    if params.stop:
        extra["stop"] = list(params.stop)
    if params.seed is not None:
        extra["seed"] = params.seed
    for name in ("temperature", "top_p"):
        if getattr(params, name) is not None:
            extra[name] = getattr(params, name)
    # Not OpenAI's: vLLM and SGLang read them from the body. Off (top_k 0, a
    # penalty of 1) is every engine's default, so it is not sent at all.
    if params.top_k:
        extra.setdefault("extra_body", {})["top_k"] = params.top_k
    if params.repetition_penalty not in (None, 1.0):
        extra.setdefault("extra_body", {})["repetition_penalty"] = params.repetition_penalty
    stream = await client.chat.completions.create(
        model=card.model,
        messages=messages,
        max_tokens=prompt.max_new_tokens,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    try:
        response = stream.response
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            body = await response.aread()
            raise MalformedStream(
                f"HTTP {response.status_code} {content_type or 'without a content type'}", body
            )
        report(
            RequestStarted(
                request.id,
                prompt_tokens=len(prompt.ids),
                dropped_messages=prompt.dropped_messages,
                max_new_tokens=prompt.max_new_tokens,
                budget_shrunk=prompt.budget_shrunk,
            )
        )
        counted, reason, usage = 0, None, None
        async for chunk in stream:
            text, chunk_reason, chunk_usage = read_chunk(chunk)
            if text:
                counted += 1
                report(TextDelta(request.id, text, tokens=1))
            reason = chunk_reason or reason
            usage = chunk_usage or usage
        if reason is None:
            raise MalformedStream("the stream ended without a finish reason", f"{counted} chunks of text")
        report(
            RequestFinished(
                request.id,
                finish_reason(reason),
                prompt_tokens=_count(usage, "prompt_tokens"),
                completion_tokens=_count(usage, "completion_tokens"),
            )
        )
    finally:
        await stream.close()


def _prepare(
    tokenizer, messages: list[dict], context_tokens: int, max_new_tokens: int
) -> tuple[list[dict], Prompt]:
    """The messages to send, control tokens broken and trimmed to fit, and
    their Prompt (counted on exactly those). Raises PromptTooLong."""
    safe = neutralise_control_tokens(messages, tokenizer)
    prompt = build_prompt(tokenizer, safe, context_tokens, max_new_tokens)
    return kept_messages(safe, prompt), prompt


def _count(usage, name: str) -> int | None:
    value = getattr(usage, name, None)
    return value if isinstance(value, int) and value >= 0 else None
