"""What generates the replies, behind one interface.

The generation service (generation.runtime.service) owns the queue, the cap,
the per-user limit and cancel; a `Backend` only generates what the service
admits. Two exist:

- `local` (generation.runtime.backends.local): the in-process model thread
  and its batched engine; the embedded default.
- `openai` (generation.runtime.backends.openai): a remote OpenAI-compatible
  engine (vLLM, SGLang, TGI, Ollama, llama.cpp's server), one streamed
  chat-completions call per admitted request.

A backend reports back only through `deliver(list[Report])` (the typed
reports of generation.runtime.types). `deliver` may be called from any
thread; the service applies the reports later on its loop, never inside the
backend's own call.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING

from generation.runtime.types import BackendInfo, Report

if TYPE_CHECKING:  # requests imports the types; typing only, no import at run time
    from generation.runtime.requests import GenerationRequest

Deliver = Callable[[list[Report]], None]


class Backend(abc.ABC):
    """The interface the service drives. All methods are called on the
    service's event loop and must not block it, except `stop`, which runs
    only at shutdown and may wait for the step in progress."""

    kind: str  # "local" or "openai"

    @abc.abstractmethod
    def start(self, deliver: Deliver) -> None:
        """Begin loading or connecting; report `BackendReady` or
        `BackendFailed` through `deliver` when known. Called once."""

    @abc.abstractmethod
    def admit(self, request: GenerationRequest) -> None:
        """Start generating for `request`, which the service has admitted
        (it is running and counts against the cap); report `RequestStarted`, `TextDelta`s, and then one of
        `RequestFinished`, `RequestFailed` or `RequestDeferred`."""

    @abc.abstractmethod
    def cancel(self, request_id: str) -> None:
        """Stop a running request soon; it still ends with
        `RequestFinished(finish_reason=CANCELLED)`, keeping its partial text.
        Unknown or finished ids are ignored."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release the model thread or the connections; called once, when the
        service stops (the process shuts down, or a test's loop ends). It may
        block: the local backend waits for its model thread to finish the
        step or model load in progress (at most 30 s), so that no forward
        pass outlives the process; the openai backend only cancels and
        closes. Nothing is reported afterwards."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """What generates, for the console, status.json and /metrics."""
