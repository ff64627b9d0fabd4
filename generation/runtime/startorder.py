"""The start order of one process's own queue (issue #15).

GenerationService keeps its waiting requests in arrival order; a
`StartOrder` says in which order they start and at which position each
waits, from the priority policy staff set (classes and ageing) and each
person's fair share of generated tokens (generation.runtime.admission.order,
the pure rules). With no policy, or an empty one, the order is arrival
order, as before. On the service's loop only.

Service is counted as it is generated, as VTC counts it: each time the order
is read, the tokens the running replies made since the last reading are
charged, so a long reply weighs on its person while it runs, not only once
it ends (counting at the end let a heavy user's next request go ahead of
people who had received less while their long replies were still running).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from generation.runtime.admission.order import (
    DEFAULT_HALF_LIFE_S,
    FairShare,
    PriorityPolicy,
    Waiter,
    start_order,
)
from generation.runtime.requests import GenerationRequest
from generation.runtime.types import RequestState


def person_of(request: GenerationRequest) -> str:
    """Whom `request` counts for in fair shares and classes: its user, as a
    string (a person's chat and API requests share one fair share)."""
    return str(request.user_id)


class StartOrder:
    """The policy in force and the fair-share counts of one service.
    `clock` returns seconds since the epoch (the requests' `enqueued_at`)."""

    def __init__(self, *, half_life_s: float = DEFAULT_HALF_LIFE_S, clock=time.time):
        self._policy: PriorityPolicy | None = None
        self.fair = FairShare(half_life_s)
        self.clock = clock
        self._charged: dict[str, int] = {}  # running request id -> tokens already counted
        self._served: dict[int, float] = {}  # class level -> when one of it last started

    @property
    def policy(self) -> PriorityPolicy | None:
        """The policy in force (None: arrival order)."""
        return self._policy

    @policy.setter
    def policy(self, policy: PriorityPolicy | None) -> None:
        if policy != self._policy:
            self._served = {}  # levels are places among the ranks in force
        self._policy = policy

    def class_of(self, request: GenerationRequest) -> str:
        """The name of `request`'s class, "" with no policy."""
        if not self.policy:
            return ""
        return self.policy.class_of(person_of(request), request.source)[0]

    def joined(self, request: GenerationRequest, active: Iterable[GenerationRequest]) -> None:
        """`request` was just accepted while `active` (the others waiting or
        running) were: a person with none of them joins at the least
        service of those of them in `request`'s class (no banked credit),
        counting what the running replies have made so far."""
        active = [r for r in active if r is not request]
        people = {person_of(r) for r in active}
        person = person_of(request)
        if person not in people:
            for other in active:
                if other.state is RequestState.RUNNING:
                    self.charge(other, ended=False)
            level = self._level(request)
            peers = {person_of(r) for r in active if self._level(r) == level}
            self.fair.join(person, people, self.clock(), peers=peers)

    def _level(self, request: GenerationRequest) -> int:
        return self._policy.level(person_of(request), request.source) if self._policy else 0

    def started(self, request: GenerationRequest) -> None:
        """`request` started: its class's ageing starts again (order.class_levels)."""
        if self._policy:
            self._served[self._level(request)] = self.clock()

    def charge(self, request: GenerationRequest, *, ended: bool = True) -> None:
        """Count the tokens `request` generated for its person since they
        were last counted; `ended` when it ended (nothing more will come)."""
        counted = self._charged.pop(request.id, 0) if ended else self._charged.get(request.id, 0)
        self.fair.charge(person_of(request), request.completion_tokens - counted, self.clock())
        if not ended:
            self._charged[request.id] = max(request.completion_tokens, counted)

    def order(
        self, queue: Iterable[GenerationRequest], running: Iterable[GenerationRequest]
    ) -> list[GenerationRequest]:
        """`queue` (arrival order, a deferred one first) in start order."""
        queue = list(queue)
        policy = self.policy
        if not policy:
            return queue
        now = self.clock()
        by_id = {r.id: r for r in queue}
        waiters = [
            Waiter(
                r.id,
                person_of(r),
                policy.level(person_of(r), r.source),
                r.enqueued_at,
                r.deferred,
            )
            for r in queue
        ]
        counts: dict[str, int] = {}
        for r in running:
            counts[person_of(r)] = counts.get(person_of(r), 0) + 1
            self.charge(r, ended=False)
        service = self.fair.values(counts.keys() | {w.person for w in waiters}, now)
        tickets = start_order(
            waiters, now=now, policy=policy, service=service, running=counts, served=self._served
        )
        return [by_id[ticket] for ticket in tickets]
