"""How the generation service applies a backend's reports.

A mixin of `GenerationService` (generation.runtime.service), kept apart so
that each module stays small: the service calls `_apply_reports` in a loop
callback of its own for every batch a backend delivers. The reports are the
typed ones of generation.runtime.types; their meaning for the queue:

- `BackendReady`: the model state is READY, the backend's info is kept (the
  status shows it) and waiting requests are admitted. It may come again
  after `BackendFailed`: the backend recovered.
- `BackendFailed`: the state is FAILED with the backend's words; every
  waiting request ends with `unavailable` in those words, and so does every
  new one until the backend is ready again. Running requests are the
  backend's to fail.
- `RequestStarted`, `TextDelta`, `RequestFinished`, `RequestFailed`: one
  running request's progress and end.
- `RequestDeferred`: the engine was busy before the request started; it goes
  back to the head of the queue and nothing is admitted for a while.

A request started on a spare site slot (generation.runtime.sitequeue.spares)
has its reports held back until the site confirms its start
(`confirm_started`).
"""

import time

from generation.runtime.requests import GenerationRequest
from generation.runtime.types import (
    BackendFailed,
    BackendReady,
    ErrorCode,
    FinishReason,
    ModelState,
    Outcome,
    Report,
    RequestDeferred,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    RequestState,
    Started,
    TextDelta,
    Token,
)


class ReportsMixin:
    """The report-applying half of GenerationService; touches its queue,
    running set, timers and endings, on the loop only."""

    def _defer(self, request: GenerationRequest, retry_after_s: float) -> None:
        """The engine was busy: put `request` back at the head of the queue, its
        queue timeout re-armed for the time it has left, and admit nothing for
        `retry_after_s` seconds (then `_admit` runs again by itself)."""
        del self.running[request.id]
        request.state, request.started_at, request.position = RequestState.QUEUED, None, None
        request.deferred = True
        self.queue.appendleft(request)
        if self.site is not None:
            self.site.defer(request)
        left = max(self.limits.queue_timeout_s - (time.time() - request.enqueued_at), 0)
        request.timeout = self.loop.call_later(left, self._expire, request)
        until = self.loop.time() + max(retry_after_s, 0)
        if until > self._held_until:
            self._held_until = until
            if self._resume is not None:
                self._resume.cancel()
            self._resume = self.loop.call_at(until, self._admit)

    def confirm_started(self, request: GenerationRequest) -> None:
        """The site bound `request`, which this process started on a spare
        slot (SiteQueue) with its reports held back: apply them now, and
        every later one as it comes."""
        held, request.held_reports = request.held_reports, None
        if held and request.id in self.running:
            self._apply_reports(held)

    # Reports from the backend ------------------------------------------

    def _apply_reports(self, reports: list[Report]) -> None:
        now = time.time()
        generated = 0
        for report in reports:
            match report:
                case BackendReady(info=info):
                    self.model_state, self.model_error, self.backend_info = ModelState.READY, "", info
                    if info.model:
                        self.model_named.set()
                    continue
                case BackendFailed(message=message):
                    self._on_backend_failed(message)
                    continue
            request = self.running.get(report.request_id)
            if request is None:
                continue
            if request.held_reports is not None:  # started on a spare, not yet bound
                request.held_reports.append(report)
                continue
            match report:
                case RequestStarted():
                    request.prompt_tokens = report.prompt_tokens
                    request.max_new_tokens = report.max_new_tokens
                    request.budget_shrunk = report.budget_shrunk
                    request.cached_tokens = report.cached_tokens
                    request.emit(
                        Started(
                            prompt_tokens=report.prompt_tokens,
                            dropped_messages=report.dropped_messages,
                            max_new_tokens=report.max_new_tokens,
                            budget_shrunk=report.budget_shrunk,
                        )
                    )
                case TextDelta(text=text, tokens=tokens):
                    generated += tokens
                    request.completion_tokens += tokens
                    if request.first_token_at is None and (tokens > 0 or text):
                        request.first_token_at = now
                    if text:
                        request.text += text
                        request.emit(Token(text=text))
                case RequestFinished(finish_reason=reason):
                    if report.prompt_tokens is not None:
                        request.prompt_tokens = report.prompt_tokens
                    if report.completion_tokens is not None:
                        request.completion_tokens = report.completion_tokens
                    cancelled = reason is FinishReason.CANCELLED
                    self._end(
                        request, Outcome.CANCELLED if cancelled else Outcome.COMPLETED, finish_reason=reason
                    )
                case RequestFailed(code=code, message=message):
                    self._fail(request, code, message)
                case RequestDeferred(retry_after_s=retry_after_s):
                    self._defer(request, retry_after_s)
        if generated:
            self._tokens.append((time.monotonic(), generated))
            self._trim_throughput(time.monotonic())
        self._admit()

    def _on_backend_failed(self, message: str) -> None:
        """The backend cannot generate: every waiting request ends with
        `unavailable` in the backend's words. Running ones are the backend's
        to fail."""
        self.model_state, self.model_error = ModelState.FAILED, message
        while self.queue:
            self._fail(self.queue.popleft(), ErrorCode.UNAVAILABLE, message)
