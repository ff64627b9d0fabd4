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

import abc
from collections.abc import Callable

from generation.runtime.types import BackendInfo, Report

Deliver = Callable[[list[Report]], None]


class Backend(abc.ABC):
    """The interface the service drives. All methods are called on the
    service's event loop and must not block it."""

    kind: str  # "local" or "openai"

    @abc.abstractmethod
    def start(self, deliver: Deliver) -> None:
        """Begin loading or connecting; report `BackendReady` or
        `BackendFailed` through `deliver` when known. Called once."""

    @abc.abstractmethod
    def admit(self, request) -> None:
        """Start generating for `request` (a GenerationRequest the service
        has admitted); report `RequestStarted`, `TextDelta`s, and then one of
        `RequestFinished`, `RequestFailed` or `RequestDeferred`."""

    @abc.abstractmethod
    def cancel(self, request_id: str) -> None:
        """Stop a running request soon; it still ends with
        `RequestFinished(finish_reason=CANCELLED)`, keeping its partial text.
        Unknown or finished ids are ignored."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release the model thread or the connections; called when the
        service stops. Nothing is reported afterwards."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """What generates, for the console, status.json and /metrics."""
