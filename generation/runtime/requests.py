"""Requests and their handles.

A `GenerationRequest` is created by `GenerationService.submit` and lives
until its terminal event. Its events are the typed events of
generation.runtime.types, in this order:

- `Queued(position, waiting, model_state, eta_s)` on entering the queue and
  whenever a field changes (position 1 is next to start; the model's state
  "loading" or "ready"; the estimated seconds until the start, or None);
  again if the engine was busy and the request went back to the head of the
  queue.
- `Started(prompt_tokens, dropped_messages, max_new_tokens, budget_shrunk)`
  once the backend has built the prompt and begins the prefill.
  `max_new_tokens` is the reply's budget in effect: below the asked one (and
  `budget_shrunk` true) when the newest message left less room in the
  context, so that a `length` finish came sooner.
- `Token(text)`: exact text deltas; their concatenation is the reply.
- `Done(finish_reason, text, usage, timings)` or `Error(code, message)`:
  terminal.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from generation.runtime.sampling import SamplingParams
from generation.runtime.types import Event, RequestSource, RequestState, Timings, Usage


@dataclass(eq=False)
class GenerationRequest:
    """One reply to generate, with its timings and its event queue.
    `user_id` and `meta` are as the submitter gave them (shapes: see
    RequestRecord); `source` is where it came from (the chat or the API,
    whose per-user limits are apart) and `api_key_id` the pk of the API key
    that sent it (None for the chat)."""

    user_id: int | str
    messages: list[dict]
    params: SamplingParams
    meta: dict[str, object]
    source: RequestSource = RequestSource.CHAT
    api_key_id: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: RequestState = RequestState.QUEUED
    enqueued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's, reused from an earlier reply's KV
    completion_tokens: int = 0
    max_new_tokens: int = 0  # the reply budget in effect, once started
    budget_shrunk: bool = False
    text: str = ""
    position: tuple[int, int] | None = None  # last (position, waiting) sent
    # Staff cancelled it from the console (service.cancel(by_staff=True)), so
    # its `Done(cancelled)` is worded as theirs, not the person's own Stop.
    cancelled_by_staff: bool = False
    wait_shown: tuple | None = None  # last (model_state, eta_s) sent
    # Sent back to the head of the queue (the engine was busy): it starts
    # before every other waiting request, whatever their classes.
    deferred: bool = False
    priority_class: str = ""  # its class's name when it arrived ("" without classes)
    timeout: asyncio.TimerHandle | None = None
    # Started on a site spare and not yet bound to it (sitequeue): the
    # backend's reports wait here, unseen by the reader, until the site
    # confirms the start (GenerationService.confirm_started). None otherwise.
    held_reports: list | None = None
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def emit(self, event: Event) -> None:
        """Queue an event for the handle's reader."""
        self.events.put_nowait(event)

    def timings(self) -> Timings:
        """Milliseconds spent waiting, to the first token, and in total."""

        def since(start: float | None, end: float | None) -> int | None:
            return None if start is None or end is None else round((end - start) * 1000)

        return Timings(
            queue_ms=since(self.enqueued_at, self.started_at),
            ttft_ms=since(self.enqueued_at, self.first_token_at),
            total_ms=since(self.enqueued_at, self.finished_at),
        )

    def usage(self) -> Usage:
        """Token counts of the prompt and the reply."""
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)


class GenerationHandle:
    """What `submit` returns: iterate it for events, or cancel the request.

    Iteration ends after the terminal event (`Done` or `Error`).
    """

    def __init__(self, request: GenerationRequest, service):
        self.request = request
        self._service = service

    @property
    def id(self) -> str:
        """The request id, as sent to clients."""
        return self.request.id

    def cancel(self) -> None:
        """Cancel the request: a queued one leaves the queue at once, a running
        one stops before its next step and keeps its partial text."""
        self._service.cancel(self.request.id)

    def __aiter__(self):
        return self._events()

    async def _events(self):
        while True:
            event = await self.request.events.get()
            yield event
            if event.terminal:
                return
