"""The generation service: one per server process, living on its event loop.

It owns the bounded FIFO queue, the concurrency cap, the per-user limits
(one per RequestSource: a person's chat replies and API requests are counted
apart) and the queue timeout, and hands admitted requests to a `Backend`
(generation.runtime.backends): the in-process model thread, or a remote
engine. All its state is touched only from the event loop; a backend
reports back with typed reports (generation.runtime.types) that are applied
in a later loop callback, never inside the backend's own call. Every
finished request, rejected ones included, yields a `RequestRecord` that
listeners (the statistics writer) receive; listeners run on the loop and
must not block. Stop listeners let such companions end with the service.

The class is put together from mixins, one module each so that each stays
small: service.scheduling (the queue: starts, positions, estimates),
service.endings (cancel, timeouts, refusals, the terminal event and the
record) and service.reporting (the backend's reports).
"""

import asyncio
import collections
import contextlib
import os
import socket
import time
from collections.abc import Callable

from generation.runtime import eta
from generation.runtime.backends import Backend
from generation.runtime.requests import GenerationHandle, GenerationRequest
from generation.runtime.sampling import SamplingParams
from generation.runtime.service.endings import EndingsMixin
from generation.runtime.service.reporting import ReportsMixin
from generation.runtime.service.scheduling import REORDER_CHECK_S, SchedulingMixin
from generation.runtime.startorder import StartOrder
from generation.runtime.types import ErrorCode, Limits, ModelState, RequestRecord, RequestSource

__all__ = ["OWN_QUEUE", "REORDER_CHECK_S", "THROUGHPUT_WINDOW_S", "GenerationService", "default_worker_name"]

THROUGHPUT_WINDOW_S = 10
OWN_QUEUE = {"scope": "process", "fallback": False, "error": ""}
"""The `admission` status of a process that admits by its own queue and cap
(no site queue); a SiteQueue reports its own (SiteQueue.status)."""


def default_worker_name() -> str:
    """Name this process in statistics and the console: host and pid."""
    return os.environ.get("GENERATION_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class GenerationService(SchedulingMixin, EndingsMixin, ReportsMixin):
    """Schedules generation requests onto one backend.

    Create it, then call `start()` from inside the running event loop; the
    backend loads or connects in the background and what arrives meanwhile
    is queued.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        limits: Limits,
        worker_name: str | None = None,
        process_max_concurrency: int = 0,
        start_order: StartOrder | None = None,
    ):
        self.limits = limits
        # Priority classes and fair shares (issue #15): the order in which
        # this process's own queue starts; arrival order until staff set a policy.
        self.start_order = start_order or StartOrder()
        # The most replies this process's engine runs at once, under the cap;
        # 0: the cap alone (GENERATION_PROCESS_MAX_CONCURRENCY).
        self.process_max_concurrency = process_max_concurrency
        # The site-wide queue (generation.runtime.sitequeue), when the site
        # shares a Redis; None: this process's own queue and cap.
        self.site = None
        self.backend = backend
        self.backend_info = backend.info()
        self.worker_name = worker_name or default_worker_name()
        self.model_state = ModelState.LOADING
        self.model_error = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: collections.deque[GenerationRequest] = collections.deque()
        self.running: dict[str, GenerationRequest] = {}
        self.record_listeners: list[Callable[[RequestRecord], None]] = []
        self.stop_listeners: list[Callable[[], None]] = []
        self._tokens = collections.deque()  # (monotonic time, tokens) per report batch
        # Recent completed replies' run times, for the queued events' eta_s.
        self.run_times = eta.RunTimes()
        self._held_until = 0.0  # loop time before which nothing is admitted (engine busy)
        self._resume: asyncio.TimerHandle | None = None
        self._reorder: asyncio.TimerHandle | None = None  # the next ageing check
        # Set once the backend has named its model (a remote engine does so
        # when first reached); awaited by `amodel_name`.
        self.model_named = asyncio.Event()
        if self.backend_info.model:
            self.model_named.set()

    @property
    def model_name(self) -> str:
        """The backend's model, once known."""
        return self.backend_info.model

    async def amodel_name(self, timeout_s: float) -> str:
        """The backend's model name, waiting up to `timeout_s` seconds for
        the backend to name it when it has not yet (a remote engine names
        its model when it is first reached); "" if it was not named in time.
        On the loop; the loop goes on meanwhile."""
        if not self.model_name:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.model_named.wait(), timeout_s)
        return self.model_name

    # Lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Bind to the running loop and start the backend (load or connect)."""
        self.loop = asyncio.get_running_loop()
        self.backend.start(self._deliver)

    def stop(self) -> None:
        """Stop the backend; used when a process or a test ends. Stop
        listeners run first, on the loop, while the service still has its state."""
        for listener in self.stop_listeners:
            listener()
        if self.site is not None:
            self.site.stop()
        for timer in (self._resume, self._reorder):
            if timer is not None:
                timer.cancel()
        self.backend.stop()

    def _deliver(self, reports: list) -> None:
        """The backend's report channel; any thread, the loop's own included.
        Always through call_soon_threadsafe, so that reports are applied in a
        callback of their own, never inside a backend call such as `admit`."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._apply_reports, reports)

    # Public API, called on the loop -----------------------------------

    def submit(
        self,
        *,
        user_id: int | str,
        messages: list[dict],
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        meta: dict[str, object] | None = None,
        ignore_eos: bool = False,
        source: RequestSource = RequestSource.CHAT,
        api_key_id: int | None = None,
        stop: tuple[str, ...] = (),
        seed: int | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
    ) -> GenerationHandle:
        """Queue a reply to `messages` for `user_id` and return its handle.

        Never blocks: a request the service cannot take gets its `Error` event
        at once (queue_full, busy, unavailable). `ignore_eos` is for
        benchmarks that need replies of a fixed length. `source` picks the
        per-user limit: a person's requests of each source are counted apart,
        against `Limits.max_active_for(source)`; `api_key_id` is kept for the
        record. `stop` (at most 4 strings), `seed` and the sampling values
        (`temperature`, `top_p`, `top_k`, `repetition_penalty`; None: the
        default, generation.runtime.sampling) are as SamplingParams describes
        them; ValueError for malformed ones.
        """
        new_tokens = min(max_new_tokens or self.limits.max_new_tokens, self.limits.max_new_tokens)
        params = SamplingParams(
            max_new_tokens=new_tokens,
            temperature=temperature,
            top_p=top_p,
            ignore_eos=ignore_eos,
            stop=tuple(stop),
            seed=seed,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
        )
        request = GenerationRequest(
            user_id=user_id,
            messages=messages,
            params=params,
            meta=meta or {},
            source=RequestSource(source),
            api_key_id=api_key_id,
        )
        handle = GenerationHandle(request, self)
        active = sum(1 for r in self._active() if r.user_id == user_id and r.source is request.source)
        if self.model_state is ModelState.FAILED:
            self._fail(request, ErrorCode.UNAVAILABLE, self.model_error)
        elif self._site_wide():
            # The site decides busy, queue_full and the start (SiteQueue).
            self._wait(request)
            self.site.enqueue(request)
        elif active >= self.limits.max_active_for(request.source):
            self._fail(request, ErrorCode.BUSY)
        elif len(self.queue) >= self.limits.max_queue_size and not self._has_free_slot():
            self._fail(request, ErrorCode.QUEUE_FULL)
        else:
            self._wait(request)
            self._admit()
        return handle

    def update_priority(self, policy) -> None:
        """Apply a new priority policy (generation.runtime.admission.order.
        PriorityPolicy; None or empty: arrival order) to this process's own
        queue now: waiting requests are reordered and shown their new
        positions; with a site queue, its order too (sent only when the
        policy changed: each read of the saved row applies it again)."""
        changed = policy != self.start_order.policy
        self.start_order.policy = policy
        if self.site is not None and changed:
            self.site.set_policy(policy)
        self._admit()

    def update_limits(self, limits: Limits) -> None:
        """Apply new limits now: a higher cap admits waiting requests at once, a
        lower one lets running requests finish, a smaller queue drops nobody.
        With a site queue, they become the site's too."""
        self.limits = limits
        if self.site is not None:
            self.site.set_limits(limits)
        self._admit()

    def admission_status(self) -> dict:
        """How this process admits, JSON-safe: its SiteQueue's status, or
        OWN_QUEUE without one."""
        return self.site.status() if self.site is not None else dict(OWN_QUEUE)

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last 10 s."""
        self._trim_throughput(time.monotonic())
        return sum(count for _, count in self._tokens) / THROUGHPUT_WINDOW_S

    def status(self) -> dict:
        """A JSON-safe snapshot for the console, status.json and metrics."""
        info = self.backend_info
        return {
            "worker": self.worker_name,
            "model": {
                "name": info.model,
                "state": str(self.model_state),
                "error": self.model_error,
                "backend": info.kind,
                "host": info.host,
                "context_tokens": info.context_tokens,
            },
            "limits": self.limits.as_dict(),
            "process_max_concurrency": self.process_max_concurrency,
            "admission": self.admission_status(),
            "running": [
                {
                    "request": r.id,
                    "user": r.user_id,
                    "source": str(r.source),
                    "meta": r.meta,
                    "since": r.started_at,
                    "tokens": r.completion_tokens,
                }
                for r in self.running.values()
            ],
            "waiting": [
                {
                    "request": r.id,
                    "position": r.position[0] if self._site_wide() and r.position else i,
                    "user": r.user_id,
                    "source": str(r.source),
                    "meta": r.meta,
                    "since": r.enqueued_at,
                    "eta_s": r.wait_shown[1] if r.wait_shown else None,
                    "class": self.start_order.class_of(r),
                }
                for i, r in enumerate(self.waiting_in_order(), start=1)
            ],
            "tokens_per_s": round(self.tokens_per_second(), 2),
        }

    def _trim_throughput(self, now: float) -> None:
        while self._tokens and self._tokens[0][0] < now - THROUGHPUT_WINDOW_S:
            self._tokens.popleft()
