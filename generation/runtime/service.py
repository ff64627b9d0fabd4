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
"""

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from generation.runtime import eta
from generation.runtime.backends import Backend
from generation.runtime.reporting import ReportsMixin
from generation.runtime.requests import GenerationHandle, GenerationRequest
from generation.runtime.sampling import SamplingParams
from generation.runtime.startorder import StartOrder
from generation.runtime.types import (
    Done,
    Error,
    ErrorCode,
    FinishReason,
    Limits,
    ModelState,
    Outcome,
    Queued,
    RequestRecord,
    RequestSource,
    RequestState,
)

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW_S = 10
REORDER_CHECK_S = 1.0
"""With priority classes, how often waiting requests' positions are checked
again: ageing moves a request up with time alone, no event."""
OWN_QUEUE = {"scope": "process", "fallback": False, "error": ""}
"""The `admission` status of a process that admits by its own queue and cap
(no site queue); a SiteQueue reports its own (SiteQueue.status)."""


def default_worker_name() -> str:
    """Name this process in statistics and the console: host and pid."""
    return os.environ.get("GENERATION_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class GenerationService(ReportsMixin):
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

    def cancel(self, request_id: str, *, by_staff: bool = False) -> None:
        """Cancel a queued or running request; unknown or finished ids are ignored.
        `by_staff`: staff stopped it from the console, which its reader is told
        (GenerationRequest.cancelled_by_staff)."""
        if request_id in self.running:
            self.running[request_id].cancelled_by_staff |= by_staff
            self.backend.cancel(request_id)
            return
        for request in self.queue:
            if request.id == request_id:
                request.cancelled_by_staff |= by_staff
                self.queue.remove(request)
                self._end(request, Outcome.CANCELLED, finish_reason=FinishReason.CANCELLED)
                self._publish_positions()
                return

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

    # Scheduling --------------------------------------------------------

    def _active(self):
        yield from self.queue
        yield from self.running.values()

    def _site_wide(self) -> bool:
        return self.site is not None and self.site.active

    def local_room(self) -> int:
        """How many more requests this process can start now: 0 while the
        backend is not ready or asked to wait, else its own bound
        (`process_max_concurrency`, or the cap) minus those running."""
        if self.model_state is not ModelState.READY or self.loop.time() < self._held_until:
            return 0
        bound = self.limits.max_concurrency
        if self.process_max_concurrency:
            bound = min(bound, self.process_max_concurrency)
        return max(bound - len(self.running), 0)

    def _has_free_slot(self) -> bool:
        return self.local_room() > 0

    def _wait(self, request: GenerationRequest) -> None:
        self.start_order.joined(request, self._active())
        request.priority_class = self.start_order.class_of(request)
        self.queue.append(request)
        request.timeout = self.loop.call_later(self.limits.queue_timeout_s, self._expire, request)

    def _admit(self) -> None:
        """Start what may start: with a site queue, ask it to claim when this
        process has room; else move requests from the head of the queue into
        free slots."""
        if self._site_wide():
            if self.queue and self.local_room() > 0:
                self.site.wake()
            return
        while self.queue and self._has_free_slot():
            self.start_waiting(self.waiting_in_order()[0])
        self._publish_positions()

    def waiting_in_order(self) -> list[GenerationRequest]:
        """This process's waiting requests in the order they start (its own
        queue's StartOrder; arrival order with a site queue, whose order the
        site decides)."""
        if self._site_wide():
            return list(self.queue)
        return self.start_order.order(self.queue, self.running.values())

    def _publish_positions(self) -> None:
        """Tell every waiting request its (position, waiting) when it changed
        (with a site queue, the site's numbers, which it reads itself)."""
        if self._site_wide():
            self.site.wake()
            return
        waiting = len(self.queue)
        for position, request in enumerate(self.waiting_in_order(), start=1):
            self.show_position(request, position, waiting)
        # Ageing reorders the queue with time alone: look again in a second.
        if self.queue and self.start_order.policy and self._reorder is None:
            self._reorder = self.loop.call_later(REORDER_CHECK_S, self._reordered)

    def _reordered(self) -> None:
        self._reorder = None
        if not self._site_wide():
            self._publish_positions()

    # What the site queue calls (generation.runtime.sitequeue) ---------

    def start_waiting(self, request: GenerationRequest) -> None:
        """Start `request`, which waits in this process's queue, on the backend."""
        self.queue.remove(request)
        request.timeout.cancel()
        request.deferred = False
        request.state = RequestState.RUNNING
        request.started_at = time.time()
        self.running[request.id] = request
        self.start_order.started(request)
        self.backend.admit(request)

    def show_position(self, request: GenerationRequest, position: int, waiting: int) -> None:
        """Send `request` a `Queued` event when its (position, waiting), the
        model's state or the (rounded) estimate of its start changed. The
        event says `moved_back` when the position grew because a request of
        a better class (or one that waited longer) went ahead of it in this
        process's own start order."""
        shown = (self.model_state, self.start_estimate(position))
        if request.position != (position, waiting) or request.wait_shown != shown:
            moved_back = (
                request.position is not None
                and position > request.position[0]
                and bool(self.start_order.policy)
            )
            request.position, request.wait_shown = (position, waiting), shown
            request.emit(
                Queued(
                    position=position,
                    waiting=waiting,
                    model_state=shown[0],
                    eta_s=shown[1],
                    moved_back=moved_back,
                )
            )

    def start_estimate(self, position: int) -> int | None:
        """About how many seconds until the request at `position` starts
        (generation.runtime.eta: Gradio's queue ETA, from this process's
        recent run times), rounded; None while the model is not ready or
        fewer than eta.MIN_SAMPLES replies have completed here. With a site
        queue, `position` is the site's and the cap the site's, while the run
        times and the running replies are this process's: an estimate."""
        mean_s = self.run_times.mean()
        if mean_s is None or self.model_state is not ModelState.READY:
            return None
        capacity = self.limits.max_concurrency
        if self.process_max_concurrency and not self._site_wide():
            capacity = min(capacity, self.process_max_concurrency)
        now = time.time()
        elapsed = [now - r.started_at for r in self.running.values() if r.started_at is not None]
        return eta.rounded(
            eta.start_in(position=position, capacity=capacity, mean_s=mean_s, running_elapsed_s=elapsed)
        )

    def reject_waiting(self, request: GenerationRequest, code: ErrorCode) -> None:
        """The site refused `request` (busy, queue_full): it leaves the queue
        with that error."""
        self.queue.remove(request)
        self._fail(request, code)

    def stop_lost(self, request: GenerationRequest, code: ErrorCode = ErrorCode.LEASE_LOST) -> None:
        """The site no longer holds `request`'s ticket (its lease ran out
        while this process was paused), or refused the one it started on a
        spare (`code` busy): stop it, waiting or running, with `code`, so
        that no slot is used twice. A reply whose start was not yet
        confirmed never showed its reader anything: it ends as never started."""
        if request.id in self.running:
            self.backend.cancel(request.id)
            if request.held_reports is not None:
                request.held_reports, request.started_at = None, None
        elif request in self.queue:
            self.queue.remove(request)
        else:
            return
        self._fail(request, code)

    def confirm_started(self, request: GenerationRequest) -> None:
        """The site bound `request`, which this process started on a spare
        slot (SiteQueue) with its reports held back: apply them now, and
        every later one as it comes."""
        held, request.held_reports = request.held_reports, None
        if held and request.id in self.running:
            self._apply_reports(held)

    def admit_locally(self) -> None:
        """The site queue cannot be reached: what waits here is admitted by
        this process's own rules from now on."""
        self._admit()

    def _expire(self, request: GenerationRequest) -> None:
        if request.state is RequestState.QUEUED and request in self.queue:
            self.queue.remove(request)
            self._fail(request, ErrorCode.QUEUE_TIMEOUT)
            self._publish_positions()

    # Endings -----------------------------------------------------------

    def _fail(self, request: GenerationRequest, code: ErrorCode, message: str = "") -> None:
        """End `request` with an `Error`; `message` defaults to the code's words."""
        self._end(request, code.outcome, error_code=code, message=message or code.text)

    def _end(
        self,
        request: GenerationRequest,
        outcome: Outcome,
        *,
        finish_reason: FinishReason | None = None,
        error_code: ErrorCode | None = None,
        message: str = "",
    ) -> None:
        """End a request: free its slot, send its terminal event (`Error` when
        `error_code` is given, else `Done`), hand its record to the listeners."""
        if request.timeout:
            request.timeout.cancel()
        self.running.pop(request.id, None)
        if self.site is not None:
            self.site.ended(request)
        request.state = RequestState.FINISHED
        request.finished_at = time.time()
        self.start_order.charge(request)  # what it made since the order last counted it
        if outcome is Outcome.COMPLETED and request.started_at is not None:
            self.run_times.add(request.finished_at - request.started_at)
        if error_code is not None:
            request.emit(Error(code=error_code, message=message))
        else:
            usage, timings = request.usage(), request.timings()
            request.emit(Done(finish_reason=finish_reason, text=request.text, usage=usage, timings=timings))
        record = RequestRecord.of(
            request,
            worker=self.worker_name,
            finished_at=request.finished_at,
            outcome=outcome,
            finish_reason=finish_reason,
            error_code=error_code,
        )
        for listener in self.record_listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("Record listener failed")

    def _trim_throughput(self, now: float) -> None:
        while self._tokens and self._tokens[0][0] < now - THROUGHPUT_WINDOW_S:
            self._tokens.popleft()
