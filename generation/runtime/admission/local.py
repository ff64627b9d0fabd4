"""Admission inside one process: the reference model of the rules.

`LocalAdmission` keeps the state in plain Python structures and follows the
rules of generation.runtime.admission.base step for step, as
`RedisAdmission`'s scripts do in Redis; the property test runs both on the
same operations and compares them. Used by one process alone (`process`
always the same name) it behaves as the per-process queue of
GenerationService: FIFO, the cap, the per-user limit and queue_full.

With a priority policy (`set_policy`, issue #15) the waiting tickets start
in generation.runtime.admission.order's start order instead of arrival
order (classes, ageing, fair shares from `account`); claims walk that order
and positions are ranks in it. Without one, or with an empty one, nothing
changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from generation.runtime.admission.base import (
    DEFAULT_LEASE_S,
    Admission,
    Admitted,
    Enqueued,
    Refused,
    Snapshot,
    Waiting,
    counted_user,
)
from generation.runtime.admission.order import FairShare, PriorityPolicy, Waiter, start_order
from generation.runtime.types import ErrorCode, Limits, RequestSource

SPARE = ""  # the user of a spare (a slot held for a request not yet received)


@dataclass
class _Ticket:
    process: str
    user: str
    deadline: float
    running: bool = False
    person: str = ""
    source: RequestSource = RequestSource.CHAT
    arrived: float = 0.0
    head: bool = False  # deferred back to the head


class LocalAdmission(Admission):
    """Admission of one process's (or, in tests, several simulated
    processes') tickets. `clock` returns seconds (time.monotonic by default;
    tests pass a clock they advance); `lease_s` as in DEFAULT_LEASE_S."""

    def __init__(self, *, lease_s: float = DEFAULT_LEASE_S, clock: Callable[[], float] = time.monotonic):
        self.lease_s = lease_s
        self.clock = clock
        self.limits: Limits | None = None
        self._tickets: dict[str, _Ticket] = {}  # insertion order is arrival order
        self._room: dict[str, tuple[int, float]] = {}  # process -> (room, lease deadline)
        self.policy: PriorityPolicy | None = None
        self.fair = FairShare()
        self._served: dict[int, float] = {}  # class level -> when one of it last started

    # The operations ----------------------------------------------------

    async def enqueue(
        self,
        ticket: str,
        process: str,
        user: str,
        limits: Limits,
        *,
        local_free: int = 0,
        rejoin: bool = False,
        source: RequestSource = RequestSource.CHAT,
        spares: Sequence[str] = (),
    ) -> Enqueued:
        now = self._reap()
        person, user = str(user), counted_user(user, source)
        if ticket in self._tickets:
            raise ValueError(f"ticket {ticket} is already known")
        if self.limits is None:
            self.limits = limits
        self._report_room(process, local_free, now)
        if not rejoin and self._count(user) >= self.limits.max_active_for(source):
            return Refused(ErrorCode.BUSY)
        waiting = self._waiting()
        held = _Ticket(process, user, now + self.lease_s, person=person, source=source, arrived=now)
        if not waiting and self._running() < self.limits.max_concurrency and local_free > 0:
            held.running = True
            self._join(held, now)
            self._tickets[ticket] = held
            self._started(held, now)
            return Admitted(spares=self._grant(process, spares, local_free - 1, now))
        if not rejoin and len(waiting) >= self.limits.max_queue_size:
            return Refused(ErrorCode.QUEUE_FULL)
        self._join(held, now)
        self._tickets[ticket] = held
        order = self._order(now)
        return Waiting(position=order.index(ticket) + 1, waiting=len(order))

    async def bind(
        self,
        spare: str,
        ticket: str,
        process: str,
        user: str,
        *,
        local_free: int,
        source: RequestSource = RequestSource.CHAT,
        spares: Sequence[str] = (),
    ) -> Admitted | Refused:
        now = self._reap()
        held = self._tickets.get(spare)
        if held is None or held.process != process or held.user != SPARE:
            return Refused(ErrorCode.LEASE_LOST)
        del self._tickets[spare]
        person, user = str(user), counted_user(user, source)
        if self._count(user) >= self.limits.max_active_for(source):
            return Refused(ErrorCode.BUSY)
        held = _Ticket(
            process, user, now + self.lease_s, running=True, person=person, source=source, arrived=now
        )
        self._join(held, now)
        self._tickets[ticket] = held
        self._started(held, now)
        return Admitted(spares=self._grant(process, spares, local_free, now))

    async def spare(self, process: str, local_free: int, spares: Sequence[str]) -> tuple[str, ...]:
        return self._grant(process, spares, local_free, self._reap())

    async def claim(self, process: str, local_free: int) -> list[str]:
        now = self._reap()
        started = []
        slots = self.limits.max_concurrency - self._running() if self.limits else 0
        room = {p: r for p, (r, _) in self._room.items()}
        room[process] = local_free
        for name in self._order(now):
            if slots <= 0:
                break
            owner = self._tickets[name].process
            if room.get(owner, 0) > 0:
                room[owner] -= 1
                slots -= 1
                if owner == process:
                    started.append(name)
        for name in started:
            self._tickets[name].running = True
            self._tickets[name].head = False
            self._started(self._tickets[name], now)
        self._report_room(process, local_free - len(started), now)
        return started

    async def release(self, ticket: str) -> bool:
        self._reap()
        return self._tickets.pop(ticket, None) is not None

    async def defer(self, ticket: str) -> bool:
        self._reap()
        held = self._tickets.get(ticket)
        if held is None or not held.running:
            return False
        held.running = False
        held.head = True
        # Arrival order is insertion order: re-insert it ahead of all waiting.
        self._tickets = {ticket: self._tickets.pop(ticket), **self._tickets}
        return True

    async def renew(self, process: str, tickets: Iterable[str]) -> list[str]:
        now = self._reap()
        if process in self._room:
            self._room[process] = (self._room[process][0], now + self.lease_s)
        gone = []
        for name in tickets:
            held = self._tickets.get(name)
            if held is None or held.process != process:
                gone.append(name)
            else:
                held.deadline = now + self.lease_s
        return gone

    async def positions(self, process: str) -> dict[str, tuple[int, int]]:
        waiting = self._order(self._reap())
        return {
            name: (position, len(waiting))
            for position, name in enumerate(waiting, start=1)
            if self._tickets[name].process == process
        }

    async def set_limits(self, limits: Limits) -> None:
        self.limits = limits

    async def set_policy(self, policy: PriorityPolicy | None) -> None:
        self._served = {}  # levels are places among the ranks in force; as SET_POLICY does
        self.policy = policy

    async def account(self, ticket: str, tokens: int, *, user: str | None = None) -> None:
        held = self._tickets.get(ticket)
        person = held.person if held is not None else user
        if person is not None:
            self.fair.charge(str(person), tokens, self.clock())

    async def snapshot(self) -> Snapshot:
        self._reap()
        users: dict[str, int] = {}
        for held in self._tickets.values():
            if held.user != SPARE:
                users[held.user] = users.get(held.user, 0) + 1
        return Snapshot(
            waiting=tuple((n, t.process, t.user) for n, t in self._tickets.items() if not t.running),
            running={
                n: (t.process, t.user) for n, t in self._tickets.items() if t.running and t.user != SPARE
            },
            spares={n: t.process for n, t in self._tickets.items() if t.user == SPARE},
            users=users,
            cap=self.limits.max_concurrency if self.limits else 0,
        )

    # State -------------------------------------------------------------

    def _reap(self) -> float:
        """Drop tickets and room reports whose lease ran out; return now.
        A deadline equal to now counts as passed, as in the scripts."""
        now = self.clock()
        for name in [n for n, t in self._tickets.items() if t.deadline <= now]:
            del self._tickets[name]
        for process in [p for p, (_, deadline) in self._room.items() if deadline <= now]:
            del self._room[process]
        return now

    def _grant(self, process: str, spares: Sequence[str], free: int, now: float) -> tuple[str, ...]:
        """Make `spares` (new ids) spares of `process` while nobody waits, the
        site is under the cap less one slot for each other process with a
        room report and no spare, and fewer than `free` were granted; then
        report `process`'s room: `free` less those granted. Returns them."""
        granted: list[str] = []
        if not self._waiting():
            holders = {t.process for t in self._tickets.values() if t.user == SPARE}
            cap = self.limits.max_concurrency - sum(
                1 for p in self._room if p != process and p not in holders
            )
            for name in spares:
                if len(granted) >= free or self._running() >= cap:
                    break
                if name not in self._tickets:
                    self._tickets[name] = _Ticket(process, SPARE, now + self.lease_s, running=True)
                    granted.append(name)
        self._report_room(process, free - len(granted), now)
        return tuple(granted)

    def _report_room(self, process: str, room: int, now: float) -> None:
        """`process` can start `room` more requests: its room report, whose lease is renewed."""
        self._room[process] = (room, now + self.lease_s)

    def _waiting(self) -> list[str]:
        return [name for name, held in self._tickets.items() if not held.running]

    def _join(self, new: _Ticket, now: float) -> None:
        """`new` (not yet among the tickets) is taken: if its person had no
        ticket, they join the fair shares at the least service of the people
        with a ticket of the same class level (order.FairShare.join)."""
        held = [t for t in self._tickets.values() if t.user != SPARE]
        if new.person not in {t.person for t in held}:
            level = self._level(new)
            peers = {t.person for t in held if self._level(t) == level}
            self.fair.join(new.person, {t.person for t in held}, now, peers=peers)

    def _level(self, held: _Ticket) -> int:
        return self.policy.level(held.person, held.source) if self.policy else 0

    def _started(self, held: _Ticket, now: float) -> None:
        """`held` started: its class's ageing starts again (order.class_levels)."""
        if self.policy:
            self._served[self._level(held)] = now

    def _order(self, now: float) -> list[str]:
        """The waiting tickets in start order (order.start_order)."""
        policy = self.policy
        waiters = []
        running: dict[str, int] = {}
        for name, held in self._tickets.items():
            if held.user == SPARE:
                continue
            if held.running:
                running[held.person] = running.get(held.person, 0) + 1
            else:
                level = policy.level(held.person, held.source) if policy else 0
                waiters.append(Waiter(name, held.person, level, held.arrived, held.head))
        service = self.fair.values(running.keys() | {w.person for w in waiters}, now)
        return start_order(
            waiters, now=now, policy=policy, service=service, running=running, served=self._served
        )

    def _running(self) -> int:
        return sum(1 for held in self._tickets.values() if held.running)

    def _count(self, user: str) -> int:
        return sum(1 for held in self._tickets.values() if held.user == user)
