"""The request record: one per finished request (service → statistics),
built by `RequestRecord.of` and nowhere else. Imported through
generation.runtime.types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from generation.runtime.types.values import ErrorCode, FinishReason, Outcome, RequestSource

if TYPE_CHECKING:
    from generation.runtime.requests import GenerationRequest


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, for the statistics (GenerationRecord rows, the
    console's latencies, /metrics). Times are epoch seconds.

    `user_id` is whom the request counts against (the per-user limit): the
    Django user's pk from the chat, or a label for requests without a login
    (`manage.py generate` sends "cli", `bench_engine` a number per simulated
    user). `meta` is what the submitter attached, JSON-safe: from the chat
    consumer `{"conversation": pk, "message": pk, "user": username}` (the
    pks of the conversation and of the user message being answered), `{}`
    from the commands; queueadmin links a record to its user and
    conversation only when these are integer pks. `source` says whether the
    chat or the API sent it, and `api_key_id` with which key (the pk of a
    generation.ApiKey; None for the chat). `cached_tokens`: prompt tokens
    whose KV the engine reused rather than prefilled (prefix reuse); not
    stored in GenerationRecord rows, counted in /metrics. `priority_class`:
    the name of its priority class when it arrived ("" with no classes;
    issue #15)."""

    request_id: str
    worker: str
    user_id: int | str
    meta: dict[str, object]
    enqueued_at: float
    started_at: float | None
    first_token_at: float | None
    finished_at: float
    prompt_tokens: int
    completion_tokens: int
    max_new_tokens: int
    budget_shrunk: bool
    outcome: Outcome
    finish_reason: FinishReason | None = None
    error_code: ErrorCode | None = None
    source: RequestSource = RequestSource.CHAT
    api_key_id: int | None = None
    cached_tokens: int = 0
    priority_class: str = ""

    @classmethod
    def of(
        cls,
        request: GenerationRequest,
        *,
        worker: str,
        finished_at: float,
        outcome: Outcome,
        finish_reason: FinishReason | None = None,
        error_code: ErrorCode | None = None,
    ) -> RequestRecord:
        """The record of `request` ending now (at `finished_at`): the one
        place a record is built, for finished and interrupted requests alike."""
        return cls(
            request_id=request.id,
            worker=worker,
            user_id=request.user_id,
            meta=request.meta,
            enqueued_at=request.enqueued_at,
            started_at=request.started_at,
            first_token_at=request.first_token_at,
            finished_at=finished_at,
            prompt_tokens=request.prompt_tokens,
            completion_tokens=request.completion_tokens,
            max_new_tokens=request.max_new_tokens,
            budget_shrunk=request.budget_shrunk,
            outcome=outcome,
            finish_reason=finish_reason,
            error_code=error_code,
            source=request.source,
            api_key_id=request.api_key_id,
            cached_tokens=request.cached_tokens,
            priority_class=request.priority_class,
        )
