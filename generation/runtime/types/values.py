"""The values that travel across the generation runtime's seams: the enums
(`ModelState`, `RequestState`, `RequestSource`, `FinishReason`, `Outcome`,
`ErrorCode`),
`ERROR_TEXT` (the one place that words the error codes for people), and the
plain values `Limits`, `BackendInfo`, `Usage` and `Timings`. Imported through
generation.runtime.types."""

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


class RequestSource(enum.StrEnum):
    """Where a request came from: the browser chat (`/ws/chat/`) or the
    OpenAI-compatible API (`/v1/`). Each source has its own per-user limit
    (`Limits.max_active_for`), and records keep it so that the console can
    show the two kinds of traffic apart."""

    CHAT = "chat"
    API = "api"


class FinishReason(enum.StrEnum):
    """Why a reply ended, as OpenAI and vLLM name it (plus our `cancelled`
    and `repetition`). The OpenAI-compatible API sends only OpenAI's names:
    `openai_name` maps ours onto them."""

    STOP = "stop"  # the model ended its turn, or the text reached a stop string
    LENGTH = "length"  # the reply budget (max_new_tokens) was reached
    CANCELLED = "cancelled"  # the user, the console or a closed socket stopped it
    # The reply kept writing the same span over and over (generation.runtime.loops).
    REPETITION = "repetition"

    @property
    def openai_name(self) -> str:
        """The reason as OpenAI's API names it: `repetition` is `length`, as
        the reply was cut by a server-side limit before the model ended it
        (a client reading `stop` would take the cut text for a whole answer);
        the others are their own names."""
        return FinishReason.LENGTH.value if self is FinishReason.REPETITION else self.value


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
    LEASE_LOST = "lease_lost"  # the site queue gave this request's slot away (sitequeue)
    # Raised by the chat protocol, not by the runtime:
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    NOT_LAST = "not_last"  # regenerate/edit of anything but the last turn
    # Not an error frame's code: a `done` frame's `code` (and a stored
    # message's error_code) when staff cancelled the request from the console.
    CANCELLED_BY_STAFF = "cancelled_by_staff"

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


def gettext_noop(text: str) -> str:
    """Marks `text` for translation and returns it unchanged: Django's
    gettext_noop, defined here so that the runtime imports no Django.
    `manage.py makemessages` collects what it marks (README, "Languages")."""
    return text


# The one place that words the error codes. Here in English, as frames, the
# API and logs carry them; marked for translation, and the chat page receives
# the table in its reader's language (generation.views). Error events carry their own
# English sentence, which may be more precise (which engine is unreachable,
# how long the message is); the page words them by their code.
ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.QUEUE_FULL: gettext_noop(
        "The server is busy: too many people are waiting. Please try again in a moment."
    ),
    ErrorCode.BUSY: gettext_noop("A reply is already in progress. Wait for it to finish or stop it first."),
    ErrorCode.QUEUE_TIMEOUT: gettext_noop("Waited too long in the queue. Please try again."),
    ErrorCode.TOO_LONG: gettext_noop("Your message is too long for the model to read. Please shorten it."),
    ErrorCode.UNAVAILABLE: gettext_noop(
        "The model is not available right now, so no reply can be written. Please try again later."
    ),
    ErrorCode.INTERNAL: gettext_noop("Something went wrong on the server. Please try again."),
    ErrorCode.LEASE_LOST: gettext_noop(
        "The server lost this reply's place in the queue and stopped it. Please send it again."
    ),
    ErrorCode.INVALID: gettext_noop("That request was not understood."),
    ErrorCode.NOT_FOUND: gettext_noop("That conversation does not exist."),
    ErrorCode.NOT_LAST: gettext_noop(
        "Only the last reply can be regenerated, and only the last question edited. Reload to see the latest."
    ),
    ErrorCode.CANCELLED_BY_STAFF: gettext_noop("The site's staff stopped this reply. You can try again."),
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
    max_active_api_per_user: int = 2

    FIELDS: ClassVar[tuple[str, ...]] = (
        "max_concurrency",
        "max_queue_size",
        "max_active_per_user",
        "max_active_api_per_user",
        "queue_timeout_s",
        "max_new_tokens",
    )
    # The limit that counts a person's requests of each source.
    PER_USER_FIELD: ClassVar[dict[RequestSource, str]] = {
        RequestSource.CHAT: "max_active_per_user",
        RequestSource.API: "max_active_api_per_user",
    }

    def max_active_for(self, source: RequestSource) -> int:
        """How many requests of `source` one person may have queued or
        running: `max_active_per_user` for the chat, `max_active_api_per_user`
        for the API. Each source is counted apart."""
        return getattr(self, self.PER_USER_FIELD[source])

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
