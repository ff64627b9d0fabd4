"""Requests, their handles, and the service's limits.

A `GenerationRequest` is created by `GenerationService.submit` and lives
until its terminal event. Its events are plain JSON-safe dicts with a `type`:

- `queued`: {"position": n, "waiting": n}, on entering the queue and whenever
  either number changes (position 1 is next to start).
- `started`: {"prompt_tokens": n, "dropped_messages": n, "max_new_tokens": n,
  "budget_shrunk": bool}, once the model thread has built the prompt and
  begins the prefill. `max_new_tokens` is the reply's budget in effect: below
  the asked one (and `budget_shrunk` true) when the newest message left less
  room in the context, so that a `length` finish came sooner.
- `token`: {"text": delta}, exact text deltas; their concatenation is the reply.
- `done`: {"finish_reason": "stop"|"length"|"cancelled", "text": full reply,
  "usage": {...}, "timings": {...}}: terminal.
- `error`: {"code": ..., "message": text for people}: terminal. Codes:
  queue_full, busy, queue_timeout, too_long, unavailable, internal.
"""

import asyncio
import enum
import time
import uuid
from dataclasses import dataclass, field

from generation.runtime.sampling import SamplingParams

TERMINAL_EVENTS = frozenset({"done", "error"})


@dataclass
class Limits:
    """The knobs staff turn at run time; validated where they are edited."""

    max_concurrency: int = 4
    max_queue_size: int = 32
    max_active_per_user: int = 1
    queue_timeout_s: float = 300
    max_new_tokens: int = 512


class State(enum.Enum):
    """Where a request is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class GenerationRequest:
    """One reply to generate, with its timings and its event queue."""

    user_id: object
    messages: list[dict]
    params: SamplingParams
    meta: dict
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: State = State.QUEUED
    enqueued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_new_tokens: int = 0  # the reply budget in effect, once started
    budget_shrunk: bool = False
    text: str = ""
    position: tuple[int, int] | None = None  # last (position, waiting) sent
    timeout: asyncio.TimerHandle | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def emit(self, type_: str, **payload) -> None:
        """Queue an event for the handle's reader."""
        self.events.put_nowait({"type": type_, **payload})

    def timings(self) -> dict:
        """Milliseconds spent waiting, to the first token, and in total."""

        def since(start: float | None, end: float | None) -> int | None:
            return None if start is None or end is None else round((end - start) * 1000)

        return {
            "queue_ms": since(self.enqueued_at, self.started_at),
            "ttft_ms": since(self.enqueued_at, self.first_token_at),
            "total_ms": since(self.enqueued_at, self.finished_at),
        }

    def usage(self) -> dict:
        """Token counts of the prompt and the reply."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class GenerationHandle:
    """What `submit` returns: iterate it for events, or cancel the request.

    Iteration ends after the terminal event (`done` or `error`).
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
            if event["type"] in TERMINAL_EVENTS:
                return
