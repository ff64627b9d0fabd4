"""Reports: what a backend tells the service (backend → service).

A backend (the in-process model thread, or a remote OpenAI-compatible
engine) says it is ready or failed, and per request that it started,
produced text, finished, failed, or must wait because the engine is busy.
Modelled on vLLM's `EngineCoreOutput` / `FinishReason`
(vllm/v1/engine/__init__.py). Imported through generation.runtime.types."""

from __future__ import annotations

from dataclasses import dataclass

from generation.runtime.types.values import BackendInfo, ErrorCode, FinishReason


@dataclass(frozen=True)
class BackendReady:
    """The backend can generate (the model loaded, or the engine answered)."""

    info: BackendInfo


@dataclass(frozen=True)
class BackendFailed:
    """The backend cannot generate; `message` says why in words for people
    (naming the engine's URL for a remote one). A backend may recover and
    send `BackendReady` again."""

    message: str


@dataclass(frozen=True)
class RequestStarted:
    """The prompt is built and the prefill begins. `max_new_tokens` is the
    reply budget in effect, below the asked one (`budget_shrunk`) when the
    newest message left less room in the context; `dropped_messages` older
    messages did not fit. `cached_tokens`: prompt tokens whose KV was reused
    from an earlier reply (prefix reuse), not prefilled again."""

    request_id: str
    prompt_tokens: int
    dropped_messages: int
    max_new_tokens: int
    budget_shrunk: bool = False
    cached_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    """New reply text; `tokens` is how many generated tokens it holds (0 for
    text a detokenizer held back until it was complete)."""

    request_id: str
    text: str
    tokens: int = 1


@dataclass(frozen=True)
class RequestFinished:
    """The reply ended and its slot is free. A remote engine's usage chunk
    may correct the counted tokens (None: keep what was counted)."""

    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class RequestFailed:
    """The request failed; its slot is free."""

    request_id: str
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class RequestDeferred:
    """The engine is busy (HTTP 429 or 503): the request did not start and
    goes back to the head of the queue for `retry_after_s` seconds."""

    request_id: str
    retry_after_s: float


Report = (
    BackendReady
    | BackendFailed
    | RequestStarted
    | TextDelta
    | RequestFinished
    | RequestFailed
    | RequestDeferred
)
