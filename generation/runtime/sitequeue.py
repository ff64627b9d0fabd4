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
- Spares: while nobody waits, the site grants this process up to `spares`
  slots for requests it has not received yet, with the answers of
  `enqueue` and `bind`, and after a release. A request that arrives when
  one is held (or gets to the site queue's turn when one has come since),
  nothing older waits here, this process has room and the person has no other reply
  running here starts at once on it (no round trip: what per-process
  admission costs), and is then bound to it (`bind`, which applies the
  per-user limit); until the site confirms it, its reader sees nothing
  (GenerationRequest.held_reports), and a refused one ends `busy` (or
  `lease_lost`) as if never started. Spares are given back as soon as a
  wake-up says that a ticket waits somewhere or the limits changed (then
  asked for again, under the new cap).
- Every third of the lease, the leases of all this process's tickets are
  renewed. A ticket the site no longer knows (this process was paused past
  its lease and its slot was given away) is stopped with `lease_lost`: the
  fence the design note asks for.
- When the Admission cannot be reached, the process falls back to its own
  queue and cap (the service's per-process rules), says so in its status,
  and tries again every PROBE_S. Once back, the requests still waiting here
  join the site queue's tail (never refused: they were accepted), new ones
  go to the site queue, and the tickets of requests that waited or ended
  meanwhile are released. A reply that was running when the outage began
  keeps its site slot if Redis still has it (each probe renews it, so a
  short outage or one slow call costs nothing); after a longer outage, or a
  Redis restart, it finishes without one, as do the replies that started
  during the outage: for their remaining time the site may run that many
  more than its cap. Nothing is lost and no request is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from generation.runtime.admission import Admission, Admitted, Refused, Waiting
from generation.runtime.requests import GenerationRequest
from generation.runtime.types import RequestState

logger = logging.getLogger(__name__)

POLL_S = 1.0
"""Seconds between claims while requests wait here and no wake-up came."""
SPARES = 1
"""Spare site slots a process asks for (module docstring); 0: none."""
# Wake-up words after which spares are given back: a ticket waits, or the cap changed.
GIVE_BACK_ON = frozenset({"enqueued", "deferred", "limits"})
PROBE_S = 2.0
"""Seconds between attempts to reach the Admission again after an outage."""
# What an unreachable Redis raises: redis-py's errors, and the OS's own
# when a connection is refused or reset before redis-py wraps it.
UNREACHABLE = (RedisError, OSError, TimeoutError)


class SiteQueue:
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
        slot when it may (see the module's docstring), else send it to the
        site queue."""
        if not self._start_on_spare(request):
            self._ops.put_nowait(lambda: self._enqueue(request))

    def _start_on_spare(self, request: GenerationRequest) -> bool:
        service = self.service
        # Only the oldest waiting here (in `submit`: the only one), so that
        # this process's own requests still start in their order.
        if not (self.active and self.spares and service.queue[0] is request and service.local_room() > 0):
            return False
        mine = sum(
            1 for r in service.running.values() if r.user_id == request.user_id and r.source is request.source
        )
        if mine >= service.limits.max_active_for(request.source):
            return False  # the site would refuse it busy: let it say so the usual way
        spare = self.spares.pop()
        request.held_reports = []
        service.start_waiting(request)
        self.tickets[request.id] = request
        self._ops.put_nowait(lambda: self._bind(spare, request))
        return True

    def _spare_ids(self, room: int) -> list[str]:
        """New ids for the spares to ask for, with `room` left here."""
        wanted = min(self.spare_target, room) - len(self.spares)
        return [f"spare:{uuid.uuid4().hex}" for _ in range(max(wanted, 0))]

    def _give_back_spares(self) -> None:
        spares, self.spares = self.spares, []
        for spare in spares:
            self._ops.put_nowait(lambda spare=spare: self._release(spare))

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
            if len(self.spares) < self.spare_target:
                self._ops.put_nowait(self._top_up)

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

    async def _bind(self, spare: str, request: GenerationRequest) -> None:
        if not self.active:  # fell back meanwhile, which confirmed the start
            self._stale.add(spare)
            return
        room = self.service.local_room()
        try:
            result = await self.admission.bind(
                spare,
                request.id,
                self.process,
                str(request.user_id),
                local_free=room,
                source=request.source,
                spares=self._spare_ids(room),
            )
        except UNREACHABLE:
            self._stale.add(spare)  # released on the rejoin, if its lease has not run out
            raise
        if isinstance(result, Admitted):
            self.spares.extend(result.spares)
            self.service.confirm_started(request)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "started %s on a spare: start %.3f ms, bound %.3f ms after the start",
                    *(request.id, (request.started_at - request.enqueued_at) * 1000),
                    (time.time() - request.started_at) * 1000,
                )
        else:
            self.tickets.pop(request.id, None)  # the site holds nothing for it
            self.service.stop_lost(request, result.code)

    async def _release(self, ticket: str) -> None:
        if self.active:
            await self.admission.release(ticket)
        else:
            self._stale.add(ticket)  # queued before the fallback: released on the rejoin

    async def _top_up(self) -> None:
        room = self.service.local_room()
        if self.active and not self.service.queue:
            self.spares.extend(await self.admission.spare(self.process, room, self._spare_ids(room)))

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

    async def _renew(self) -> None:
        if not self.active:
            return
        # Not those started on a spare whose bind is still to come (queued
        # after this renewal): the site knows them only once bound.
        held = {ticket: r for ticket, r in self.tickets.items() if r.held_reports is None}
        spares = set(self.spares)
        for ticket in await self.admission.renew(self.process, [*held, *spares]):
            if ticket in spares:
                self.spares.remove(ticket)
                continue
            request = held[ticket]
            self._accounted.pop(ticket, None)
            if self.tickets.pop(ticket, None) is not None:
                logger.warning("Request %s lost its place at the site (lease ran out); stopping it", ticket)
                self.service.stop_lost(request)
        if self._policy:
            await self._account_running()

    async def _account_running(self) -> None:
        """Count the tokens each running reply here made since the last
        count for its person's fair share (issue #15): service counts as it
        is generated, as VTC counts it, so a long reply weighs on its person
        while it runs, not only once it ends."""
        for ticket, request in list(self.tickets.items()):
            if ticket not in self.tickets or request.id not in self.service.running:
                continue  # it ended during an earlier await: `ended` counts the rest
            if request.held_reports is not None:
                continue  # started on a spare, not bound yet
            counted = self._accounted.get(ticket, 0)
            if request.completion_tokens > counted:
                # Noted before the await, so that an end meanwhile counts only the rest.
                self._accounted[ticket] = request.completion_tokens
                await self.admission.account(ticket, request.completion_tokens - counted)

    async def _probe(self) -> None:
        if self.active:
            return
        # Raises while still unreachable; else renews the slots of the
        # replies that ran through the outage, or says which are gone.
        gone = set(await self.admission.renew(self.process, list(self._held)))
        # Only these were taken by this process's own rules; one sent while
        # the rejoin below awaits goes through its own enqueue, checked.
        accepted = list(self.service.queue)
        self.active, self.error = True, ""
        logger.warning("%s: the site queue is reachable again; rejoining it", self.process)
        for ticket, request in self._held.items():
            if ticket not in gone and request.id in self.service.running:
                self.tickets[ticket] = request  # still holds its site slot
            elif ticket not in gone:
                self._stale.add(ticket)  # ended during the outage
        self._held.clear()
        for ticket in self._stale:
            await self.admission.release(ticket)
        self._stale.clear()
        await self.admission.set_limits(self.service.limits)
        if self._policy:  # a restarted Redis forgot it (issue #15)
            await self.admission.set_policy(self._policy)
        for request in accepted:
            await self._enqueue(request, rejoin=True)
        self._listen()
        self.wake()

    def _fall_back(self, error: BaseException, why: str = "cannot be reached") -> None:
        if not self.active:
            return
        self.active = False
        self.error = f"The site queue (Redis) {why}: {error or type(error).__name__}"
        running = self.service.running
        self._held.update((ticket, r) for ticket, r in self.tickets.items() if r.id in running)
        self._stale.update(ticket for ticket in self.tickets if ticket not in self._held)
        # A waiting request may hold a ticket this process never heard of:
        # its enqueue ran in Redis but the reply was lost (a timeout). Its
        # rejoin would then be refused as already known.
        self._stale.update(request.id for request in self.service.queue)
        self._stale.update(self.spares)
        self.spares.clear()
        self.tickets.clear()
        self._accounted.clear()
        logger.warning("%s: %s; limits are per process until it is back", self.process, self.error)
        try:
            # Replies started on a spare and not yet bound run by this
            # process's rules now (they were within its own cap).
            for request in [r for r in running.values() if r.held_reports is not None]:
                self.service.confirm_started(request)
            self.service.admit_locally()
        except Exception:  # the operations task must outlive a backend's failure
            logger.exception("Admitting the waiting requests by this process's rules failed")

    # Background tasks --------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            if self.active:
                await asyncio.sleep(self.admission.lease_s / 3)
                self._ops.put_nowait(self._renew)
            else:
                await asyncio.sleep(self.probe_s)
                self._ops.put_nowait(self._probe)

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
                    if word in GIVE_BACK_ON:
                        self._give_back_spares()
                        if word == "limits" and self.spare_target:
                            self._ops.put_nowait(self._top_up)  # as many as the new cap allows
                    if self.service.queue:
                        self.wake()
            except UNREACHABLE as error:
                logger.info("Site queue wake-ups interrupted (%s); the poll goes on", error)
                await asyncio.sleep(self.probe_s)
