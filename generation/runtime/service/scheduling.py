"""How the generation service starts waiting requests and shows their places.

A mixin of `GenerationService` (generation.runtime.service), kept apart so
that each module stays small: the queue's bookkeeping, on the loop only.

- Without a site queue, this process's own queue starts requests in its
  StartOrder (arrival order, or the priority classes' order of issue #15)
  into free slots: the cap, or `process_max_concurrency` when lower, and
  nothing while the backend is not ready or asked to wait. Each waiting
  request is shown its (position, waiting) and an estimate of its start
  (generation.runtime.eta) whenever one of them changes; with priority
  classes the positions are checked again every REORDER_CHECK_S, since
  ageing reorders the queue with time alone.
- With a site queue (generation.runtime.sitequeue), the site decides which
  request starts and what position it shows: the service only wakes the
  SiteQueue when it may have room, and the SiteQueue calls `start_waiting`,
  `show_position` and, after an outage began, `admit_locally`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from generation.runtime import eta
from generation.runtime.backends import Backend
from generation.runtime.requests import GenerationRequest
from generation.runtime.startorder import StartOrder
from generation.runtime.types import Limits, ModelState, Queued, RequestState

if TYPE_CHECKING:
    from generation.runtime.sitequeue import SiteQueue

REORDER_CHECK_S = 1.0
"""With priority classes, how often waiting requests' positions are checked
again: ageing moves a request up with time alone, no event."""


class SchedulingMixin:
    """The queue-keeping half of GenerationService."""

    # Set by GenerationService.__init__.
    limits: Limits
    start_order: StartOrder
    process_max_concurrency: int
    site: SiteQueue | None
    backend: Backend
    model_state: ModelState
    loop: asyncio.AbstractEventLoop
    queue: collections.deque[GenerationRequest]
    running: dict[str, GenerationRequest]
    run_times: eta.RunTimes
    _held_until: float
    _reorder: asyncio.TimerHandle | None

    def _active(self) -> Iterator[GenerationRequest]:
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

    # Also what the site queue calls (generation.runtime.sitequeue) ----

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

    def admit_locally(self) -> None:
        """The site queue cannot be reached: what waits here is admitted by
        this process's own rules from now on."""
        self._admit()
