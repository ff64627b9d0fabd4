"""The site queue's leases, and its fallback while Redis cannot be reached.

- Every third of the lease, the leases of all this process's tickets (and
  spares) are renewed. A ticket the site no longer knows (this process was
  paused past its lease and its slot was given away) is stopped with
  `lease_lost`: the fence the design note asks for. With priority classes
  (issue #15) each renewal also counts the tokens the running replies made
  since the last one, for their people's fair shares.
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

LeasesMixin is this half of SiteQueue (generation.runtime.sitequeue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from generation.runtime.admission import Admission
from generation.runtime.requests import GenerationRequest

if TYPE_CHECKING:
    from generation.runtime.service import GenerationService

logger = logging.getLogger(__name__)

PROBE_S = 2.0
"""Seconds between attempts to reach the Admission again after an outage."""
# What an unreachable Redis raises: redis-py's errors, and the OS's own
# when a connection is refused or reset before redis-py wraps it.
UNREACHABLE = (RedisError, OSError, TimeoutError)


class LeasesMixin:
    """The lease-keeping and fallback half of SiteQueue."""

    # Set by SiteQueue.__init__.
    service: GenerationService
    admission: Admission
    process: str
    probe_s: float
    active: bool
    error: str
    tickets: dict[str, GenerationRequest]
    spares: list[str]
    _ops: asyncio.Queue[Callable[[], Awaitable[None]]]
    _stale: set[str]
    _held: dict[str, GenerationRequest]
    _policy: object
    _accounted: dict[str, int]

    async def _heartbeat(self) -> None:
        while True:
            if self.active:
                await asyncio.sleep(self.admission.lease_s / 3)
                self._ops.put_nowait(self._renew)
            else:
                await asyncio.sleep(self.probe_s)
                self._ops.put_nowait(self._probe)

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
