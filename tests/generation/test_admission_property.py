"""A property test of site-wide admission (issue #11), on a real Redis.

Hypothesis draws sequences of arrivals, claims, finished replies, cancels,
deferrals (engine busy), cap changes and process deaths on three simulated processes and runs each
on RedisAdmission (a redis-server of this module's own, flushed before every
example) and on LocalAdmission (the reference model, on a clock the test
advances). After every step both must agree, and the test's own
bookkeeping checks what people would notice:

- never more running than the cap when something starts;
- no request lost or counted twice: every ticket is waiting, running,
  ended (released) or reaped (its process died), in one place only, and the
  per-user counts are those of the waiting and running tickets, a person's
  chat and API requests counted apart, each refused `busy` at its own limit;
- spares (slots held for requests not yet received) count in the cap, are
  granted only while nobody waits and while every other living process
  that holds no spare could still start one request, never count against a person, and a
  request bound to one is refused `busy` at the person's limit;
- no overtaking: when a process starts tickets, they are its oldest waiting
  ones, and every older ticket still waiting on a process with room has a
  free slot set aside for it; and a process that leaves one of its own
  tickets waiting does so only because the site is full.

A death is a process that stops renewing: the others renew while twice
0.6 lease passes, and the dead one's tickets and room report must be gone;
a new process takes its place (a restarted daphne has a new name).
"""

import asyncio
import time

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.runtime.admission import (
    Admitted,
    LocalAdmission,
    RedisAdmission,
    Refused,
    Waiting,
    counted_user,
)
from generation.runtime.types import ErrorCode, Limits, RequestSource
from tests.live import redis_server

PROCESSES = 3  # simulated daphne processes; one that dies is replaced by a new one
USERS = ["u0", "u1", "u2", "u3"]
# Short, so that a death costs 1.8 s of sleep, yet long enough that a living
# process's lease survives a step stalled for a second on a busy machine
# (living leases are renewed every quarter lease between steps).
LEASE_S = 1.5
QUEUE_SIZE, PER_USER, PER_USER_API = 5, 2, 1

process = st.integers(min_value=0, max_value=PROCESSES - 1)  # which of the three
# One operation: its kind drawn by weight (arrivals and claims make the
# queues that the others act on; a death costs 1.8 s of sleep), then its
# arguments.
ARGUMENTS = {
    "enqueue": st.tuples(
        process, st.sampled_from(USERS), st.sampled_from(list(RequestSource)), st.integers(0, 2)
    ),
    "spare": st.tuples(process, st.integers(min_value=1, max_value=2)),
    "bind": st.tuples(
        st.integers(min_value=0, max_value=9),
        st.sampled_from(USERS),
        st.sampled_from(list(RequestSource)),
        st.integers(0, 2),
    ),
    "unspare": st.tuples(st.integers(min_value=0, max_value=9)),
    "claim": st.tuples(process),
    "finish": st.tuples(st.integers(min_value=0, max_value=9)),
    "cancel": st.tuples(st.integers(min_value=0, max_value=9)),
    "defer": st.tuples(st.integers(min_value=0, max_value=9)),
    "cap": st.tuples(st.integers(min_value=0, max_value=4)),
    "die": st.tuples(process),
}
WEIGHTS = {
    "enqueue": 8,
    "claim": 8,
    "finish": 4,
    "cancel": 2,
    "defer": 2,
    "cap": 2,
    "die": 1,
    "spare": 3,
    "bind": 4,
    "unspare": 1,
}
operation = st.sampled_from([kind for kind, weight in WEIGHTS.items() for _ in range(weight)]).flatmap(
    lambda kind: ARGUMENTS[kind].map(lambda args: (kind, *args))
)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.port


class Clock:
    """The model's clock, advanced by the test as real time passes for Redis."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


class Site:
    """Both admissions plus the test's own bookkeeping of every ticket."""

    def __init__(self, client, cap: int, capacities: list[int]):
        self.clock = Clock()
        self.redis = RedisAdmission(client, prefix="property", lease_s=LEASE_S)
        self.model = LocalAdmission(lease_s=LEASE_S, clock=self.clock)
        self.limits = Limits(
            max_concurrency=cap,
            max_queue_size=QUEUE_SIZE,
            max_active_per_user=PER_USER,
            max_active_api_per_user=PER_USER_API,
        )
        # ticket -> new | waiting | running | spare | ended | refused | reaped
        self.state: dict[str, str] = {}
        self.order: list[str] = []  # tickets in arrival order
        self.owner: dict[str, tuple[str, str]] = {}  # ticket -> (process, user as counted)
        self.room: dict[str, int] = {}  # process -> room it last reported, less what it started
        self.names = [f"p{i}" for i in range(PROCESSES)]  # the living, by slot
        self.capacities = capacities  # how many each slot's process can run itself
        self.dead: set[str] = set()
        self.serial = 0

    async def both(self, name: str, *args, **kwargs):
        """Run one operation on both; they must answer the same."""
        got = await getattr(self.redis, name)(*args, **kwargs)
        expected = await getattr(self.model, name)(*args, **kwargs)
        assert got == expected, (name, args, kwargs)
        return got

    def held(self, state: str, *, alive: bool = True) -> list[str]:
        return [
            t
            for t in self.order
            if self.state[t] == state and (not alive or self.owner[t][0] not in self.dead)
        ]

    async def step(self, op: tuple) -> None:
        match op:
            case ("enqueue", slot, user, source, wanted):
                process, free = self.names[slot], self.local_free(slot)
                ticket = self.new_ticket(process, counted_user(user, source))
                count = self.count(counted_user(user, source))
                ids = self.spare_ids(process, wanted)
                waiting_before = bool(self.held("waiting", alive=False))
                result = await self.both(
                    "enqueue", ticket, process, user, self.limits, local_free=free, source=source, spares=ids
                )
                if count >= self.limits.max_active_for(source):
                    assert result == Refused(ErrorCode.BUSY)  # each source's own limit
                self.room[process] = free
                if isinstance(result, Admitted):
                    self.state[ticket] = "running"
                    self.room[process] -= 1
                    assert self.busy_slots() <= self.limits.max_concurrency
                    self.granted_spares(process, result.spares, ids, waiting_before)
                else:
                    self.state[ticket] = "waiting" if isinstance(result, Waiting) else "refused"
            case ("spare", slot, wanted):
                process, free = self.names[slot], self.local_free(slot)
                ids = self.spare_ids(process, wanted)
                waiting_before = bool(self.held("waiting", alive=False))
                granted = await self.both("spare", process, free, ids)
                assert len(granted) <= max(free, 0)
                self.room[process] = free
                self.granted_spares(process, granted, ids, waiting_before)
            case ("bind", index, user, source, wanted):
                # A process starts a request on its spare only when it has room.
                spares = [t for t in self.held("spare") if self.local_free(self.slot(t)) > 0]
                if spares:
                    spare = spares[index % len(spares)]
                    process = self.owner[spare][0]
                    self.state[spare] = "ended"  # bound or refused, it is no spare any more
                    free = self.local_free(self.slot(spare)) - 1  # the ticket already started
                    ticket = self.new_ticket(process, counted_user(user, source))
                    count = self.count(counted_user(user, source))
                    ids = self.spare_ids(process, wanted)
                    waiting_before = bool(self.held("waiting", alive=False))
                    result = await self.both(
                        "bind", spare, ticket, process, user, local_free=free, source=source, spares=ids
                    )
                    if count >= self.limits.max_active_for(source):
                        assert result == Refused(ErrorCode.BUSY)
                        self.state[ticket] = "refused"
                    else:
                        assert isinstance(result, Admitted)
                        self.state[ticket] = "running"
                        self.room[process] = free
                        self.granted_spares(process, result.spares, ids, waiting_before)
            case ("unspare", index):
                spares = self.held("spare")
                if spares:
                    spare = spares[index % len(spares)]
                    assert await self.both("release", spare) is True
                    self.state[spare] = "ended"
            case ("claim", slot):
                await self.claim(self.names[slot], self.local_free(slot))
            case ("finish", index) | ("cancel", index):
                tickets = self.held("running" if op[0] == "finish" else "waiting")
                if tickets:
                    ticket = tickets[index % len(tickets)]
                    assert await self.both("release", ticket) is True
                    self.state[ticket] = "ended"
            case ("defer", index):
                tickets = self.held("running")
                if tickets:
                    ticket = tickets[index % len(tickets)]
                    assert await self.both("defer", ticket) is True
                    self.state[ticket] = "waiting"
                    self.order.remove(ticket)  # back to the head of the queue
                    self.order.insert(0, ticket)
            case ("cap", cap):
                self.limits = self.limits.replace(max_concurrency=cap)
                await self.both("set_limits", self.limits)
            case ("die", slot) if not self.dead:  # one per example, for time
                await self.die(slot)
        await self.check()

    def new_ticket(self, process: str, user: str) -> str:
        self.serial += 1
        ticket = f"t{self.serial}"
        self.order.append(ticket)
        self.owner[ticket] = (process, user)
        self.state[ticket] = "new"  # until its answer says
        return ticket

    def slot(self, ticket: str) -> int:
        return self.names.index(self.owner[ticket][0])

    def count(self, user: str) -> int:
        held = self.held("waiting", alive=False) + self.held("running", alive=False)
        return sum(1 for t in held if self.owner[t][1] == user)

    def spare_ids(self, process: str, wanted: int) -> list[str]:
        ids = []
        for _ in range(wanted):
            self.serial += 1
            ids.append(f"s{self.serial}")
            self.owner[ids[-1]] = (process, "")
        return ids

    def busy_slots(self) -> int:
        """Slots taken: running tickets and spares, of the dead too until reaped."""
        return len(self.held("running", alive=False)) + len(self.held("spare", alive=False))

    def granted_spares(self, process: str, granted, ids: list[str], waiting_before: bool) -> None:
        """Record `granted` (of `ids`, in order) and check the rules of spares."""
        assert list(granted) == ids[: len(granted)]
        for spare in granted:
            self.state[spare] = "spare"
            self.order.append(spare)
        if granted:
            assert not waiting_before  # never while a ticket waits
            holders = {self.owner[t][0] for t in self.held("spare", alive=False)}
            others = sum(1 for p in self.room if p not in (process, *self.dead, *holders))
            assert self.busy_slots() + others <= self.limits.max_concurrency
        self.room[process] -= len(granted)

    def local_free(self, slot: int) -> int:
        """What the process in `slot` can start now: its own capacity less
        what it runs, as GenerationService would tell."""
        running = [t for t in self.held("running") if self.owner[t][0] == self.names[slot]]
        return self.capacities[slot] - len(running)

    async def claim(self, process: str, free: int) -> None:
        waiting_before = self.held("waiting", alive=False)
        started = await self.both("claim", process, free)
        mine = [t for t in waiting_before if self.owner[t][0] == process]
        assert started == mine[: len(started)] and len(started) <= free
        for ticket in started:
            self.state[ticket] = "running"
        running, cap = self.busy_slots(), self.limits.max_concurrency
        if started:
            assert running <= cap
            newest = waiting_before.index(started[-1])
            assert running + self.granted(waiting_before[:newest], process) <= cap
        left = mine[len(started) :]
        if left and len(started) < free:
            before = waiting_before.index(left[0])
            assert running + self.granted(waiting_before[:before], process) >= cap
        self.room[process] = free - len(started)

    def granted(self, older: list[str], claimer: str) -> int:
        """How many of the `older` waiting tickets of other processes have a
        slot set aside: those within their process's room, oldest first."""
        left = dict(self.room)
        count = 0
        for ticket in older:
            owner = self.owner[ticket][0]
            if owner != claimer and self.state[ticket] == "waiting" and left.get(owner, 0) > 0:
                left[owner] -= 1
                count += 1
        return count

    async def die(self, slot: int) -> None:
        """The process in `slot` stops renewing; the others renew while 1.2
        leases pass. A new process (a restarted daphne) takes the slot."""
        process = self.names[slot]
        self.dead.add(process)
        self.names[slot] = f"{process}'"
        for _ in range(2):
            await self.renew_alive()
            await asyncio.sleep(LEASE_S * 0.6)
            self.clock.now += LEASE_S * 0.6
        await self.renew_alive()
        for ticket in self.order:
            if self.owner[ticket][0] == process and self.state[ticket] in ("waiting", "running", "spare"):
                self.state[ticket] = "reaped"
        self.room.pop(process, None)

    async def renew_alive(self) -> None:
        for process in self.names:
            mine = [t for t in self.order if self.owner[t][0] == process]
            held = [t for t in mine if self.state[t] in ("waiting", "running", "spare")]
            assert await self.both("renew", process, held) == []

    async def check(self) -> None:
        snapshot = await self.both("snapshot")
        assert [t for t, _, _ in snapshot.waiting] == self.held("waiting", alive=False)
        assert sorted(snapshot.running) == sorted(self.held("running", alive=False))
        assert snapshot.spares == {t: self.owner[t][0] for t in self.held("spare", alive=False)}
        held = self.held("waiting", alive=False) + self.held("running", alive=False)
        users = {}
        for ticket in held:
            users[self.owner[ticket][1]] = users.get(self.owner[ticket][1], 0) + 1
        assert snapshot.users == users
        for name in self.names:
            positions = await self.both("positions", name)
            waiting = self.held("waiting", alive=False)
            assert positions == {
                t: (i, len(waiting)) for i, t in enumerate(waiting, start=1) if self.owner[t][0] == name
            }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cap=st.integers(min_value=1, max_value=3),
    capacities=st.lists(st.integers(min_value=0, max_value=2), min_size=PROCESSES, max_size=PROCESSES),
    ops=st.lists(operation, min_size=20, max_size=60),
)
def test_admission_keeps_its_promises(redis_port, cap, capacities, ops):
    async def run():
        client = redis.asyncio.Redis(port=redis_port)
        try:
            await client.flushdb()
            site = Site(client, cap, capacities)
            await site.both("set_limits", site.limits)
            began = time.monotonic()
            for op in ops:
                await site.step(op)
                # Keep the living processes' leases fresh between steps, as
                # their heartbeats would; the model's clock stands still.
                if time.monotonic() - began > LEASE_S / 4:
                    await site.renew_alive()
                    began = time.monotonic()
        finally:
            await client.aclose()

    asyncio.run(run())
