"""The generation service: one per server process, living on its event loop.

It owns the bounded FIFO queue, the concurrency cap, the per-user limit and
the queue timeout, and hands admitted requests to the model thread
(`ModelWorker`). All its state is touched only from the event loop; the
model thread reports back through `call_soon_threadsafe`. Every finished
request, rejected ones included, yields a record that listeners (the
statistics writer) receive; listeners run on the loop and must not block.
Stop listeners let such companions end with the service.
"""

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from generation.runtime.requests import GenerationHandle, GenerationRequest, Limits, State
from generation.runtime.sampling import SamplingParams
from generation.runtime.worker import ModelWorker, Report

if TYPE_CHECKING:  # loading imports torch, which only the model thread needs
    from generation.runtime.loading import LoadedModel

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW_S = 10

REJECTIONS = {
    "queue_full": "The server is busy: the queue is full. Please try again in a moment.",
    "busy": "You already have a reply in progress. Wait for it to finish or stop it first.",
    "queue_timeout": "Timed out waiting in the queue. Please try again.",
    "unavailable": "The model could not be loaded, so no reply can be generated right now.",
}
OUTCOMES = {"queue_full": "rejected", "busy": "rejected", "too_long": "rejected", "queue_timeout": "timeout"}


def default_worker_name() -> str:
    """Name this process in statistics and the console: host and pid."""
    return os.environ.get("GENERATION_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class GenerationService:
    """Schedules generation requests onto one model thread.

    Create it, then call `start()` from inside the running event loop; it
    loads the model in the background and queues what arrives meanwhile.
    """

    def __init__(
        self,
        *,
        load: Callable[[], "LoadedModel"],
        limits: Limits,
        strategy: str = "batched",
        worker_name: str | None = None,
    ):
        self.limits = limits
        self.worker_name = worker_name or default_worker_name()
        self.model_state = "loading"
        self.model_error = ""
        self.model_name = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: collections.deque[GenerationRequest] = collections.deque()
        self.running: dict[str, GenerationRequest] = {}
        self.record_listeners: list[Callable[[dict], None]] = []
        self.stop_listeners: list[Callable[[], None]] = []
        self._tokens = collections.deque()  # (monotonic time, tokens) per step
        self._worker = ModelWorker(load, self._deliver, strategy)

    # Lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Bind to the running loop and start loading the model."""
        self.loop = asyncio.get_running_loop()
        self._worker.start()

    def stop(self) -> None:
        """Stop the model thread; used when a process or a test ends. Stop
        listeners run first, on the loop, while the service still has its state."""
        for listener in self.stop_listeners:
            listener()
        self._worker.stop()

    def _deliver(self, reports: list[Report]) -> None:
        """Called in the model thread: pass reports to the loop."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._apply_reports, reports)

    # Public API, called on the loop -----------------------------------

    def submit(
        self,
        *,
        user_id,
        messages: list[dict],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        meta: dict | None = None,
        ignore_eos: bool = False,
    ) -> GenerationHandle:
        """Queue a reply to `messages` for `user_id` and return its handle.

        Never blocks: a request the service cannot take gets its `error` event
        at once (queue_full, busy, unavailable). `ignore_eos` is for
        benchmarks that need replies of a fixed length.
        """
        new_tokens = min(max_new_tokens or self.limits.max_new_tokens, self.limits.max_new_tokens)
        params = SamplingParams(
            max_new_tokens=new_tokens, temperature=temperature, top_p=top_p, ignore_eos=ignore_eos
        )
        request = GenerationRequest(user_id=user_id, messages=messages, params=params, meta=meta or {})
        handle = GenerationHandle(request, self)
        active = sum(1 for r in self._active() if r.user_id == user_id)
        if self.model_state == "failed":
            self._reject(request, "unavailable")
        elif active >= self.limits.max_active_per_user:
            self._reject(request, "busy")
        elif len(self.queue) >= self.limits.max_queue_size and not self._has_free_slot():
            self._reject(request, "queue_full")
        else:
            self.queue.append(request)
            request.timeout = self.loop.call_later(self.limits.queue_timeout_s, self._expire, request)
            self._admit()
        return handle

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request; unknown or finished ids are ignored."""
        if request_id in self.running:
            self._worker.cancel(request_id)
            return
        for request in self.queue:
            if request.id == request_id:
                self.queue.remove(request)
                self._finish(request, "done", outcome="cancelled", finish_reason="cancelled")
                self._publish_positions()
                return

    def update_limits(self, **changes) -> None:
        """Apply new limits now: a higher cap admits waiting requests at once, a
        lower one lets running requests finish, a smaller queue drops nobody."""
        for name, value in changes.items():
            if not hasattr(self.limits, name):
                raise AttributeError(f"Unknown limit {name!r}")
            setattr(self.limits, name, value)
        self._admit()

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last 10 s."""
        self._trim_throughput(time.monotonic())
        return sum(count for _, count in self._tokens) / THROUGHPUT_WINDOW_S

    def status(self) -> dict:
        """A JSON-safe snapshot for the console, status.json and metrics."""
        return {
            "worker": self.worker_name,
            "model": {"name": self.model_name, "state": self.model_state, "error": self.model_error},
            "limits": vars(self.limits).copy(),
            "running": [
                {
                    "request": r.id,
                    "user": r.user_id,
                    "meta": r.meta,
                    "since": r.started_at,
                    "tokens": r.completion_tokens,
                }
                for r in self.running.values()
            ],
            "waiting": [
                {"request": r.id, "position": i, "user": r.user_id, "meta": r.meta, "since": r.enqueued_at}
                for i, r in enumerate(self.queue, start=1)
            ],
            "tokens_per_s": round(self.tokens_per_second(), 2),
        }

    # Scheduling --------------------------------------------------------

    def _active(self):
        yield from self.queue
        yield from self.running.values()

    def _has_free_slot(self) -> bool:
        return self.model_state == "ready" and len(self.running) < self.limits.max_concurrency

    def _admit(self) -> None:
        """Move requests from the head of the queue into free slots."""
        while self.queue and self._has_free_slot():
            request = self.queue.popleft()
            request.timeout.cancel()
            request.state = State.RUNNING
            request.started_at = time.time()
            self.running[request.id] = request
            self._worker.admit(request)
        self._publish_positions()

    def _publish_positions(self) -> None:
        """Tell every waiting request its (position, waiting) when it changed."""
        waiting = len(self.queue)
        for position, request in enumerate(self.queue, start=1):
            if request.position != (position, waiting):
                request.position = (position, waiting)
                request.emit("queued", position=position, waiting=waiting)

    def _expire(self, request: GenerationRequest) -> None:
        if request.state is State.QUEUED and request in self.queue:
            self.queue.remove(request)
            self._fail(request, "queue_timeout", REJECTIONS["queue_timeout"])
            self._publish_positions()

    def _reject(self, request: GenerationRequest, code: str) -> None:
        self._fail(request, code, REJECTIONS[code])

    # Reports from the model thread ------------------------------------

    def _apply_reports(self, reports: list[Report]) -> None:
        now = time.time()
        generated = 0
        for report in reports:
            kind = report[0]
            if kind == "loaded":
                self._on_loaded(report[1])
                continue
            if kind == "load_failed":
                self._on_load_failed(report[1])
                continue
            request = self.running.get(report[1])
            if request is None:
                continue
            if kind == "started":
                _, _, request.prompt_tokens, dropped, request.max_new_tokens, request.budget_shrunk = report
                request.emit(
                    "started",
                    prompt_tokens=request.prompt_tokens,
                    dropped_messages=dropped,
                    max_new_tokens=request.max_new_tokens,
                    budget_shrunk=request.budget_shrunk,
                )
            elif kind in ("token", "text"):
                if kind == "token":
                    generated += 1
                    request.completion_tokens += 1
                    request.first_token_at = request.first_token_at or now
                if report[2]:
                    request.text += report[2]
                    request.emit("token", text=report[2])
            elif kind == "finished":
                outcome = "cancelled" if report[2] == "cancelled" else "completed"
                self._finish(request, "done", outcome=outcome, finish_reason=report[2])
            elif kind == "failed":
                self._fail(request, report[2], report[3])
        if generated:
            self._tokens.append((time.monotonic(), generated))
            self._trim_throughput(time.monotonic())
        self._admit()

    def _on_loaded(self, loaded: "LoadedModel") -> None:
        self.model_state, self.model_name = "ready", loaded.name

    def _on_load_failed(self, message: str) -> None:
        self.model_state, self.model_error = "failed", message
        while self.queue:
            self._reject(self.queue.popleft(), "unavailable")

    # Endings -----------------------------------------------------------

    def _fail(self, request: GenerationRequest, code: str, message: str) -> None:
        self._finish(request, "error", outcome=OUTCOMES.get(code, "error"), code=code, message=message)

    def _finish(self, request: GenerationRequest, event: str, *, outcome: str, **payload) -> None:
        """End a request: free its slot, send its terminal event, emit its record."""
        if request.timeout:
            request.timeout.cancel()
        self.running.pop(request.id, None)
        request.state = State.FINISHED
        request.finished_at = time.time()
        if event == "done":
            payload.update(text=request.text, usage=request.usage(), timings=request.timings())
        request.emit(event, **payload)
        record = {
            "request": request.id,
            "worker": self.worker_name,
            "user": request.user_id,
            "meta": request.meta,
            "enqueued_at": request.enqueued_at,
            "started_at": request.started_at,
            "first_token_at": request.first_token_at,
            "finished_at": request.finished_at,
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": request.completion_tokens,
            "max_new_tokens": request.max_new_tokens,
            "budget_shrunk": request.budget_shrunk,
            "outcome": outcome,
            "finish_reason": payload.get("finish_reason", ""),
            "error_code": payload.get("code", ""),
        }
        for listener in self.record_listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("Record listener failed")

    def _trim_throughput(self, now: float) -> None:
        while self._tokens and self._tokens[0][0] < now - THROUGHPUT_WINDOW_S:
            self._tokens.popleft()
