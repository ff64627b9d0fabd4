"""The types that cross the generation runtime's seams.

Three boundaries, each typed here and nowhere else:

- backend → service: `Report`s. A backend (the in-process model thread, or a
  remote OpenAI-compatible engine) says it is ready or failed, and per
  request that it started, produced text, finished, failed, or must wait
  because the engine is busy. Modelled on vLLM's `EngineCoreOutput` /
  `FinishReason` (vllm/v1/engine/__init__.py).
- service → consumers: `Event`s, one stream per request, ending with `Done`
  or `Error`. Each has a `type` and a JSON-safe `as_dict()`.
- service → statistics: one `RequestRecord` per finished request, built by
  `RequestRecord.of` and nowhere else.

Plus the values that travel between them: `Limits` (the live knobs, from the
console form to the scheduler as one value), `ModelState`, `Outcome`,
`FinishReason`, `ErrorCode` and `BackendInfo`. Nothing here imports Django
or torch.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import ClassVar

# Enums ----------------------------------------------------------------------


class ModelState(enum.StrEnum):
    """Whether the backend can generate: loading (or connecting), ready, failed."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class RequestState(enum.Enum):
    """Where a request is in its life (GenerationRequest.state)."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    """Why a reply ended, as OpenAI and vLLM name it (plus our `cancelled`)."""

    STOP = "stop"  # the model ended its turn
    LENGTH = "length"  # the reply budget (max_new_tokens) was reached
    CANCELLED = "cancelled"  # the user, the console or a closed socket stopped it


class Outcome(enum.StrEnum):
    """How a request ended, as statistics count it (GenerationRecord.outcome)."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    ERROR = "error"
    INTERRUPTED = "interrupted"  # still queued or running when its service stopped


class ErrorCode(enum.StrEnum):
    """Every error code a person or a client can meet; `ERROR_TEXT` words them."""

    QUEUE_FULL = "queue_full"
    BUSY = "busy"
    QUEUE_TIMEOUT = "queue_timeout"
    TOO_LONG = "too_long"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # Raised by the chat protocol, not by the runtime:
    INVALID = "invalid"
    NOT_FOUND = "not_found"

    @property
    def outcome(self) -> Outcome:
        """The statistics outcome of a request that ended with this code."""
        if self in (ErrorCode.QUEUE_FULL, ErrorCode.BUSY, ErrorCode.TOO_LONG):
            return Outcome.REJECTED
        if self is ErrorCode.QUEUE_TIMEOUT:
            return Outcome.TIMEOUT
        return Outcome.ERROR

    @property
    def text(self) -> str:
        """The code in plain words, for people."""
        return ERROR_TEXT[self]


# The one place that words the error codes. The page receives this table
# (generation.views), and error events carry their own sentence, which may be
# more precise (which engine is unreachable, how long the message is).
ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.QUEUE_FULL: "The server is busy: too many people are waiting. Please try again in a moment.",
    ErrorCode.BUSY: "A reply is already in progress. Wait for it to finish or stop it first.",
    ErrorCode.QUEUE_TIMEOUT: "Waited too long in the queue. Please try again.",
    ErrorCode.TOO_LONG: "Your message is too long for the model to read. Please shorten it.",
    ErrorCode.UNAVAILABLE: "The model is not available right now, so no reply can be written. Please try again later.",
    ErrorCode.INTERNAL: "Something went wrong on the server. Please try again.",
    ErrorCode.INVALID: "That request was not understood.",
    ErrorCode.NOT_FOUND: "That conversation does not exist.",
}


# Values ---------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The knobs staff turn at run time, as one value from the console form to
    the scheduler. Validated where they are edited (queueadmin's model);
    `replace` makes a changed copy."""

    max_concurrency: int = 4
    max_queue_size: int = 32
    max_active_per_user: int = 1
    queue_timeout_s: float = 300
    max_new_tokens: int = 512

    FIELDS: ClassVar[tuple[str, ...]] = (
        "max_concurrency",
        "max_queue_size",
        "max_active_per_user",
        "queue_timeout_s",
        "max_new_tokens",
    )

    def as_dict(self) -> dict:
        """JSON-safe form, for the channel layer and status payloads."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, base: Limits | None = None) -> Limits:
        """Read limits from JSON; missing keys keep `base`'s value (or the
        defaults), unknown keys are ignored."""
        known = {name: data[name] for name in cls.FIELDS if name in data}
        return dataclasses.replace(base or cls(), **known)

    def replace(self, **changes) -> Limits:
        """A copy with `changes`; raises TypeError for an unknown limit."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BackendInfo:
    """What generates the replies, for the console, status.json and /metrics:
    `kind` ("local" or "openai"), `host` (where the engine runs: "in-process"
    or the base URL), `model` (its name, once known) and `context_tokens`
    (its context window, 0 while unknown)."""

    kind: str
    host: str
    model: str = ""
    context_tokens: int = 0


@dataclass(frozen=True)
class Usage:
    """Token counts of one request's prompt and reply."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    """Milliseconds from enqueue to start (queue wait), to the first token
    (TTFT) and to the end; None where the request never got there."""

    queue_ms: int | None = None
    ttft_ms: int | None = None
    total_ms: int | None = None


# Reports: backend → service ------------------------------------------------


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
    messages did not fit."""

    request_id: str
    prompt_tokens: int
    dropped_messages: int
    max_new_tokens: int
    budget_shrunk: bool = False


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


# Events: service → consumers -----------------------------------------------


class _Event:
    type: ClassVar[str]
    terminal: ClassVar[bool] = False

    def as_dict(self) -> dict:
        """JSON-safe form: the fields plus `type`."""
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Queued(_Event):
    """The request waits at `position` (1 is next) of `waiting`; sent on
    entering the queue and whenever either number changes."""

    type: ClassVar[str] = "queued"
    position: int
    waiting: int


@dataclass(frozen=True)
class Started(_Event):
    """The reply started; see `RequestStarted` for the fields."""

    type: ClassVar[str] = "started"
    prompt_tokens: int
    dropped_messages: int
    max_new_tokens: int
    budget_shrunk: bool


@dataclass(frozen=True)
class Token(_Event):
    """An exact text delta; the deltas concatenated are the reply."""

    type: ClassVar[str] = "token"
    text: str


@dataclass(frozen=True)
class Done(_Event):
    """The reply ended (terminal); `text` is all of it."""

    type: ClassVar[str] = "done"
    terminal: ClassVar[bool] = True
    finish_reason: FinishReason
    text: str
    usage: Usage
    timings: Timings


@dataclass(frozen=True)
class Error(_Event):
    """The request failed (terminal); `message` is for people."""

    type: ClassVar[str] = "error"
    terminal: ClassVar[bool] = True
    code: ErrorCode
    message: str


Event = Queued | Started | Token | Done | Error


# Records: service → statistics ---------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, for the statistics (GenerationRecord rows, the
    console's latencies, /metrics). Times are epoch seconds."""

    request_id: str
    worker: str
    user_id: object
    meta: dict
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

    @classmethod
    def of(
        cls,
        request,
        *,
        worker: str,
        finished_at: float,
        outcome: Outcome,
        finish_reason: FinishReason | None = None,
        error_code: ErrorCode | None = None,
    ) -> RequestRecord:
        """The record of `request` (a GenerationRequest) ending now: the one
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
        )
