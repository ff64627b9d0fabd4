"""One process's place in the site-wide queue (issue #11).

When the site shares a Redis, each process's GenerationService admits its
requests through a `SiteQueue`, which talks to the site's `Admission`
(generation.runtime.admission): the cap, the FIFO, the positions and the
per-user limit are then the site's, not the process's. Requests stay in the
service's own queue and running set; the SiteQueue only decides when each
waiting one starts and what position it shows.

How it runs, all on the service's loop:

- Every call to the Admission goes through one task, in the order the
  service asked (so requests reach the site queue in the order people sent
  them, and a release never overtakes the claim it answers).
- A claim is made when this process may have room (a reply ended, the cap
  rose, the backend became ready) and whenever another process says the
  queue moved (the Admission's `wakeups`, Redis PUB/SUB), and at least
  every POLL_S while requests wait here, so a lost wake-up costs latency,
  never a stuck queue. The positions are read with each claim.
- Spares, slots the site holds for this process's next request so that it
  starts with no round trip: sitequeue.spares.
- Leases, renewed every third of the lease, and the fallback to this
  process's own queue and cap while the Admission cannot be reached:
  sitequeue.leases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from generation.runtime.admission import Admission, Admitted, Refused, Waiting
from generation.runtime.requests import GenerationRequest
from generation.runtime.sitequeue.leases import PROBE_S, UNREACHABLE, LeasesMixin
from generation.runtime.sitequeue.spares import GIVE_BACK_ON, SPARES, SparesMixin
from generation.runtime.types import RequestState

__all__ = ["GIVE_BACK_ON", "POLL_S", "PROBE_S", "SPARES", "UNREACHABLE", "SiteQueue"]

logger = logging.getLogger(__name__)

POLL_S = 1.0
"""Seconds between claims while requests wait here and no wake-up came."""


class SiteQueue(SparesMixin, LeasesMixin):
    """Admits `service`'s requests through the site-wide `admission`, as
    `process` (the service's worker name: unique per process on the site).
    Create it, set it as `service.site`, then `start()` it on the loop."""

    def __init__(
        self,
        service,
        admission: Admission,
        *,
        process: str,
        poll_s: float = POLL_S,
        probe_s: float = PROBE_S,
        spares: int = SPARES,
    ):
        self.service = service
        self.admission = admission
        self.process = process
        self.poll_s = poll_s
        self.probe_s = probe_s
        self.active = True  # False while fallen back to the process's own queue
        self.error = ""  # why it fell back, for the console
        self.tickets: dict[str, GenerationRequest] = {}  # registered at the site
        self.spare_target = spares
        self.spares: list[str] = []  # spare slots held at the site, unused
        self._ops: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._refresh_queued = False
        self._stale: set[str] = set()  # tickets to release on the rejoin
        # Running replies that held a site slot when the outage began: kept
        # alive by each probe, and theirs again on the rejoin if Redis still
        # has them (a short outage, Redis not restarted).
        self._held: dict[str, GenerationRequest] = {}
        self._tasks: list[asyncio.Task] = []
        self._listener: asyncio.Task | None = None
        self._policy = None  # the priority policy last set (issue #15)
        self._accounted: dict[str, int] = {}  # running request id -> tokens already sent to `account`

    # Lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the operations task, the heartbeat, the poll and the
        wake-up listener on the running loop."""
        loop = asyncio.get_running_loop()
        for run in (self._work, self._heartbeat, self._poll):
            self._tasks.append(loop.create_task(run(), name=f"sitequeue-{run.__name__.strip('_')}"))
        self._listen()
        if self.spare_target:
            self._ops.put_nowait(self._top_up)  # also reports this process, which others then leave a slot

    def stop(self) -> None:
        """Stop the tasks (the service is stopping). Tickets still held are
        left to their leases: the loop may be closing, and a lease is short."""
        for task in [*self._tasks, self._listener]:
            if task is not None:
                task.cancel()

    def status(self) -> dict:
        """JSON-safe: `scope` is "site" (the site's cap and queue apply) or
        "process" (fallen back: this process's own), `error` says why."""
        return {
            "scope": "site" if self.active else "process",
            "fallback": not self.active,
            "error": self.error,
            "lease_s": self.admission.lease_s,
        }

    # What the service calls, on the loop; never blocks -----------------

    def enqueue(self, request: GenerationRequest) -> None:
        """A new request, already in the service's queue: start it on a spare
        slot when it may (sitequeue.spares), else send it to the site queue."""
        if not self._start_on_spare(request):
            self._ops.put_nowait(lambda: self._enqueue(request))

    def ended(self, request: GenerationRequest) -> None:
        """`request` ended (done, cancelled, timed out, failed): free its
        ticket at the site at once."""
        if self.tickets.pop(request.id, None) is not None:
            self._ops.put_nowait(lambda: self._release(request.id))
            # Its person's fair share (issue #15), after the release: what the
            # renewals have not counted yet.
            tokens = request.completion_tokens - self._accounted.pop(request.id, 0)
            if tokens > 0:
                user = str(request.user_id)
                self._ops.put_nowait(
                    lambda: self._call(self.admission.account(request.id, tokens, user=user))
                )
            self._top_up_if_short()

    def defer(self, request: GenerationRequest) -> None:
        """The engine was busy: `request` goes back to the head of the site
        queue. One without a ticket (it started while the site queue could not
        be reached) joins its tail, as a rejoin would have put it there."""
        if request.id in self.tickets:
            self._ops.put_nowait(lambda: self._call(self.admission.defer(request.id)))
        else:
            self._ops.put_nowait(lambda: self._enqueue(request, rejoin=True))

    def set_limits(self, limits) -> None:
        """The console saved new limits: make them the site's."""
        self._ops.put_nowait(lambda: self._call(self.admission.set_limits(limits)))

    def set_policy(self, policy) -> None:
        """Staff changed the priority classes (issue #15): make `policy`
        the site queue's start order (sent again on a rejoin)."""
        self._policy = policy
        self._ops.put_nowait(lambda: self._call(self.admission.set_policy(policy)))

    def wake(self) -> None:
        """Claim what may start here and refresh positions, soon (at most one pending)."""
        if not self._refresh_queued:
            self._refresh_queued = True
            self._ops.put_nowait(self._refresh)

    # The operations, one at a time -------------------------------------

    async def _work(self) -> None:
        while True:
            operation = await self._ops.get()
            try:
                await operation()
            except UNREACHABLE as error:
                self._fall_back(error)
            except Exception:
                logger.exception("Site queue operation failed")

    async def _call(self, awaitable) -> None:
        if self.active:
            await awaitable
        else:
            awaitable.close()

    def _waiting_here(self, request: GenerationRequest) -> bool:
        return request.state is RequestState.QUEUED and request in self.service.queue

    async def _enqueue(self, request: GenerationRequest, *, rejoin: bool = False) -> None:
        if not self.active or not self._waiting_here(request) or request.id in self.tickets:
            return  # the service's own queue has it, it already ended, or a rejoin sent it
        if not rejoin and self._start_on_spare(request):
            return  # a spare came with an answer since `submit`
        service = self.service
        picked_at = time.time()  # for the DEBUG trace below
        room = service.local_room()
        try:
            result = await self.admission.enqueue(
                request.id,
                self.process,
                str(request.user_id),
                service.limits,
                local_free=room,
                rejoin=rejoin,
                source=request.source,
                spares=self._spare_ids(room - 1),
            )
        except ValueError as error:
            # The site already holds this ticket: an enqueue that Redis ran
            # but whose reply a broken connection lost was sent again (the
            # client retries a connection error once). Where it stands at
            # the site is unknown here: resync as after an outage.
            self._fall_back(error, why="lost track of a request")
            return
        if isinstance(result, Admitted):
            self.spares.extend(result.spares)
        if isinstance(result, Refused):
            if self._waiting_here(request):
                service.reject_waiting(request, result.code)
            return
        self.tickets[request.id] = request
        if not self._waiting_here(request):  # cancelled or timed out meanwhile
            self.ended(request)
        elif isinstance(result, Admitted):
            answered_at = time.time()
            service.start_waiting(request)
            if logger.isEnabledFor(logging.DEBUG):
                # Where submit-to-start went (bench_chat --processes, issue #11).
                logger.debug(
                    "admitted %s: hop %.3f ms, enqueue %.3f ms, start %.3f ms",
                    *(request.id, (picked_at - request.enqueued_at) * 1000),
                    *((answered_at - picked_at) * 1000, (request.started_at - answered_at) * 1000),
                )
        elif isinstance(result, Waiting):
            service.show_position(request, result.position, result.waiting)

    async def _release(self, ticket: str) -> None:
        if self.active:
            await self.admission.release(ticket)
        else:
            self._stale.add(ticket)  # queued before the fallback: released on the rejoin

    async def _refresh(self) -> None:
        self._refresh_queued = False
        if not self.active:
            return
        waiting = [r for r in self.service.queue if r.id in self.tickets]
        if not waiting:
            return
        room = self.service.local_room()
        for ticket in await self.admission.claim(self.process, room):
            request = self.tickets.get(ticket)
            if request is not None and self._waiting_here(request):
                self.service.start_waiting(request)
            elif request is not None:
                self.ended(request)
            else:
                # Either it ended before the claim answered (its release is
                # queued; a second one is harmless) or it is a predecessor's
                # under the same worker name (a restart): free its slot now
                # rather than when its lease runs out.
                self._ops.put_nowait(lambda ticket=ticket: self._release(ticket))
        if any(r.id in self.tickets and self._waiting_here(r) for r in waiting):
            for ticket, (position, total) in (await self.admission.positions(self.process)).items():
                request = self.tickets.get(ticket)
                if request is not None and self._waiting_here(request):
                    self.service.show_position(request, position, total)

    # Background tasks --------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self.active and self.service.queue:
                self.wake()

    def _listen(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        self._listener = asyncio.get_running_loop().create_task(self._wakeups(), name="sitequeue-wakeups")

    async def _wakeups(self) -> None:
        while self.active:
            try:
                async for word in self.admission.wakeups():
                    self._spares_heard(word)
                    if self.service.queue:
                        self.wake()
            except UNREACHABLE as error:
                logger.info("Site queue wake-ups interrupted (%s); the poll goes on", error)
                await asyncio.sleep(self.probe_s)
