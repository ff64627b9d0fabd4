"""How a request leaves the generation service.

A mixin of `GenerationService` (generation.runtime.service), kept apart so
that each module stays small; on the loop only. A request ends once, in one
of these ways, each of which frees its slot (and its site ticket), sends its
terminal event and hands its `RequestRecord` to the record listeners:

- `cancel`: the person (or staff, from the console) stopped it;
- its queue timeout ran out while it waited (`queue_timeout`);
- the site queue refused it (`reject_waiting`: busy, queue_full) or no
  longer holds its ticket (`stop_lost`: lease_lost, or busy after a start on
  a spare slot);
- the backend finished or failed it (generation.runtime.service.reporting).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from generation.runtime import eta
from generation.runtime.backends import Backend
from generation.runtime.requests import GenerationRequest
from generation.runtime.startorder import StartOrder
from generation.runtime.types import (
    Done,
    Error,
    ErrorCode,
    FinishReason,
    Outcome,
    RequestRecord,
    RequestState,
)

if TYPE_CHECKING:
    from generation.runtime.sitequeue import SiteQueue

logger = logging.getLogger(__name__)


class EndingsMixin:
    """The request-ending half of GenerationService."""

    # Set by GenerationService.__init__.
    start_order: StartOrder
    site: SiteQueue | None
    backend: Backend
    worker_name: str
    queue: collections.deque[GenerationRequest]
    running: dict[str, GenerationRequest]
    record_listeners: list[Callable[[RequestRecord], None]]
    run_times: eta.RunTimes
    loop: asyncio.AbstractEventLoop

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

    def _expire(self, request: GenerationRequest) -> None:
        if request.state is RequestState.QUEUED and request in self.queue:
            self.queue.remove(request)
            self._fail(request, ErrorCode.QUEUE_TIMEOUT)
            self._publish_positions()

    # What the site queue calls (generation.runtime.sitequeue) ---------

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
