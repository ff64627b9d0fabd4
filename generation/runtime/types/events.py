"""Events: what the service tells a request's reader (service → consumers).

One stream per request, ending with `Done` or `Error`. Each has a `type` and
a JSON-safe `as_dict()`. Imported through generation.runtime.types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from generation.runtime.types.values import ErrorCode, FinishReason, ModelState, Timings, Usage


class _Event:
    type: ClassVar[str]
    terminal: ClassVar[bool] = False

    def as_dict(self) -> dict:
        """JSON-safe form: the fields plus `type`."""
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Queued(_Event):
    """The request waits at `position` (1 is next) of `waiting`; sent on
    entering the queue and whenever any field changes. `model_state` is
    "loading" while the model loads (or a remote engine is not reached yet):
    then nothing can start, whatever the position. `eta_s`: about how many
    seconds until the reply starts (whole seconds, rounded coarser as it
    grows, see generation.runtime.eta), or None while unknown (too few
    finished replies, or the model still loading). `moved_back`: the
    position grew since the last one because requests of a better priority
    class (or that waited longer) arrived ahead of this one (issue #15)."""

    type: ClassVar[str] = "queued"
    position: int
    waiting: int
    model_state: ModelState = ModelState.READY
    eta_s: int | None = None
    moved_back: bool = False

    def as_dict(self) -> dict:
        """As every event's, except that `moved_back` is sent only when true
        (the frame is unchanged for clients that do not know it)."""
        data = super().as_dict()
        if not self.moved_back:
            del data["moved_back"]
        return data


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
