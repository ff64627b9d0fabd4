"""The site queue's spare slots (issue #11): a start with no round trip.

A spare is a site slot granted to this process for a request it has not
received yet: a running ticket of nobody at the site, counted in the cap and
against no per-user limit (generation.runtime.admission.scripts: the
note on spares above BIND).
While nobody waits, the site grants this process up to `spares` of them with
the answers of `enqueue` and `bind`, and after a release. A request that
arrives when one is held (or gets to the site queue's turn when one has come
since), nothing older waits here, this process has room and the person has
no other reply running here starts at once on it (no round trip: what
per-process admission costs), and is then bound to it (`bind`, which applies
the per-user limit); until the site confirms it, its reader sees nothing
(GenerationRequest.held_reports), and a refused one ends `busy` (or
`lease_lost`) as if never started. Spares are given back as soon as a
wake-up says that a ticket waits somewhere or the limits changed (then asked
for again, under the new cap). Their leases are renewed with the tickets',
and an outage releases them on the rejoin (sitequeue.leases).

SparesMixin is this half of SiteQueue (generation.runtime.sitequeue); its
DEBUG trace of each start on a spare goes to a child of the site queue's
logger.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from generation.runtime.admission import Admission, Admitted
from generation.runtime.requests import GenerationRequest
from generation.runtime.sitequeue.leases import UNREACHABLE

if TYPE_CHECKING:
    from generation.runtime.service import GenerationService

logger = logging.getLogger(__name__)

SPARES = 1
"""Spare site slots a process asks for (module docstring); 0: none."""
# Wake-up words after which spares are given back: a ticket waits, or the cap changed.
GIVE_BACK_ON = frozenset({"enqueued", "deferred", "limits"})


class SparesMixin:
    """The spare-slot half of SiteQueue: `spares` holds the ids of the
    slots held at the site and not used yet, up to `spare_target`."""

    # Set by SiteQueue.__init__.
    service: GenerationService
    admission: Admission
    process: str
    active: bool
    tickets: dict[str, GenerationRequest]
    spare_target: int
    spares: list[str]
    _ops: asyncio.Queue[Callable[[], Awaitable[None]]]
    _stale: set[str]

    def _start_on_spare(self, request: GenerationRequest) -> bool:
        """Start `request` at once on a held spare when it may (see the
        module's docstring) and queue its `bind`; False when it may not."""
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

    def _top_up_if_short(self) -> None:
        """Ask the site for spares soon, if fewer than `spare_target` are held."""
        if len(self.spares) < self.spare_target:
            self._ops.put_nowait(self._top_up)

    def _spares_heard(self, word: str) -> None:
        """A wake-up `word` came: give the spares back when a ticket waits
        somewhere or the limits changed, and after a change of the limits
        ask for as many as the new cap allows."""
        if word in GIVE_BACK_ON:
            spares, self.spares = self.spares, []
            for spare in spares:
                self._ops.put_nowait(lambda spare=spare: self._release(spare))
            if word == "limits" and self.spare_target:
                self._ops.put_nowait(self._top_up)

    # The operations (SiteQueue._work runs them one at a time) ----------

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

    async def _top_up(self) -> None:
        room = self.service.local_room()
        if self.active and not self.service.queue:
            self.spares.extend(await self.admission.spare(self.process, room, self._spare_ids(room)))
