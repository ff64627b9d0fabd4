"""The admission interface and its typed results.

An `Admission` decides which generation requests may run, for one process
(`LocalAdmission`) or for the whole site (`RedisAdmission`). It knows
requests only by their ticket (the request id), the process that holds them
and the user they count against; it never generates anything and never
imports Django.

The rules, the same in both implementations (issue #11):

- `max_concurrency` (the cap): the site never runs more tickets than this.
  A lower cap lets running tickets finish; it starts nothing new until the
  running ones are below it.
- the per-user limit: a user's waiting and running tickets of one source
  (RequestSource: the chat or the API) together, on every process; one more
  is refused `busy`. Each source has its own limit (`max_active_per_user`
  for the chat, `max_active_api_per_user` for the API) and its own count:
  an API ticket counts as the user `counted_user(user, source)`, e.g.
  "7:api", a chat ticket as the user itself.
- `max_queue_size`: the site-wide number waiting; one more is refused
  `queue_full` (unless it can start at once).
- FIFO with one exception, the rule for a locally full process: a claim walks
  the waiting tickets in arrival order and grants a site slot to each ticket
  whose process has room (as that process last reported in `enqueue` or
  `claim`); a ticket whose process is full is passed over and keeps its
  place. The claiming process starts its own granted tickets; a ticket
  granted to another process keeps its slot reserved until that process
  claims it, so no later ticket can take it (no overtaking among tickets
  that could all start). A process's report of its room lasts as long as its
  lease, so a dead one holds reservations for at most one lease.
- Spares: a process may hold a few slots for requests it has not received
  yet (`spares` in `enqueue` and `bind`), so that its next request starts
  at once, without a round trip, and is bound to the slot afterwards
  (`bind`, which checks the per-user limit then). A spare counts against
  the cap like a running ticket and against nobody's per-user limit. It is
  granted only while nobody waits and while every other living process
  (one whose room report has not lapsed) that holds no spare itself could
  still start a request at once, so it is an arrival older than every ticket waiting after it and
  seldom makes one wait; its process gives it back (`release`) as soon as
  it hears that a ticket waits or the limits changed, and a spare left idle
  otherwise lasts as long as its lease (the process renews it).
- Leases: every ticket has a deadline, `lease_s` after it was enqueued or
  last renewed. A ticket past its deadline is dropped (its slot and its
  user's count come back) by the next operation of any process: a process
  that dies holds slots only for one lease. The pattern is the fair counting
  semaphore with refreshed leases of Redis in Action, §6.3 (Josiah Carlson,
  2013), extended with a FIFO of waiting tickets as in
  ../shared/design/global-queue.md.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

from generation.runtime.types import ErrorCode, Limits, RequestSource

DEFAULT_LEASE_S = 5.0
"""How long a ticket survives without a renewal, in seconds. A process
renews its tickets every third of this (the research note's heartbeat), so
one lost or late heartbeat costs nothing; a killed process's slots come back
within this time after its last renewal."""


def counted_user(user: str, source: RequestSource) -> str:
    """Whom a ticket of `user` from `source` counts against: the user itself
    for the chat (as before sources existed, so that a chat ticket of a
    process not yet upgraded counts the same), `"<user>:<source>"` otherwise.
    Snapshot.users shows these names."""
    return user if source is RequestSource.CHAT else f"{user}:{source}"


@dataclass(frozen=True)
class Admitted:
    """The ticket may start now; it holds a site slot until released.
    `spares`: the spares granted with it (see the module's rules)."""

    spares: tuple[str, ...] = ()


@dataclass(frozen=True)
class Waiting:
    """The ticket waits at `position` (1 is next) of `waiting` site-wide.
    (Named apart from the `Queued` event, which carries the same numbers to
    the client.)"""

    position: int
    waiting: int


@dataclass(frozen=True)
class Refused:
    """The ticket was not taken: `code` is ErrorCode.QUEUE_FULL or
    ErrorCode.BUSY. Nothing is held."""

    code: ErrorCode


Enqueued = Admitted | Waiting | Refused


@dataclass(frozen=True)
class Snapshot:
    """The whole admission state, for tests and the console: `waiting` in
    arrival order as (ticket, process, user), `running` as {ticket: (process,
    user)}, `users` as {user: waiting + running count}, and the cap in
    effect; `spares` as {spare: process}. Users are strings (a Redis hash field), as `counted_user` names
    them (an API ticket's user ends in ":api")."""

    waiting: tuple[tuple[str, str, str], ...]
    running: dict[str, tuple[str, str]]
    users: dict[str, int]
    cap: int
    spares: dict[str, str] = field(default_factory=dict)  # spare -> process; they count in the cap


class Admission(abc.ABC):
    """Site-wide (or process-wide) admission of tickets. All methods are
    coroutines, called on the process's event loop; `RedisAdmission` raises
    redis.RedisError when Redis cannot be reached (the caller falls back to
    a `LocalAdmission`)."""

    lease_s: float

    @abc.abstractmethod
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
        """Take a new ticket of `user` from `source` (whose per-user limit
        and count apply). `local_free` is how many more requests
        `process` can run now; `limits` is this process's view of the limits,
        used only where none were set site-wide (`set_limits`). The ticket
        starts at once (`Admitted`) only when nobody waits, the site is under
        the cap and `local_free` > 0; otherwise it waits (`Waiting`, and the
        caller calls `claim` when it has room) or is `Refused` (busy is
        checked before queue_full, as the per-process queue did). `rejoin`
        is for a request the process took while the site's admission was
        unreachable: it was accepted then, so it is never refused now (it
        joins the tail). `spares`: new ids the process would like as spares;
        an `Admitted` ticket comes with those granted (while nobody waits and
        the site is under the cap, at most `local_free` - 1). Raises
        ValueError for a ticket already known."""

    @abc.abstractmethod
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
        """`process` started `ticket` of `user` from `source` on its `spare`:
        the ticket takes the spare's slot (`Admitted`, with the further
        `spares` granted as in `enqueue`, at most `local_free`, the room
        left with the ticket running), or is `Refused(BUSY)` when the user
        is at the source's per-user limit (the slot is freed: the caller
        stops the ticket), or `Refused(LEASE_LOST)` when the spare is not
        this process's any more (its lease ran out: the caller stops it)."""

    @abc.abstractmethod
    async def spare(self, process: str, local_free: int, spares: Sequence[str]) -> tuple[str, ...]:
        """Make those of `spares` (new ids) that the rules allow spares of
        `process` (at most `local_free`, its room now, which it also
        reports); returns them. Called when a process starts (with no ids:
        its room report makes the others leave it a slot), and when its
        spares ran out and nothing waits there (after a release)."""

    @abc.abstractmethod
    async def claim(self, process: str, local_free: int) -> list[str]:
        """The waiting tickets of `process` that start now, in arrival order
        (at most `local_free`; see the module's FIFO rule). They become
        running; the caller starts them. Also records `local_free` minus
        those started as the process's room."""

    @abc.abstractmethod
    async def release(self, ticket: str) -> bool:
        """Drop a waiting or running ticket (done, cancelled, timed out,
        disconnected) and free its slot and user count at once. False when
        the ticket was unknown (already released or reaped)."""

    @abc.abstractmethod
    async def defer(self, ticket: str) -> bool:
        """Put a running ticket back at the head of the waiting tickets (the
        engine was busy: RequestDeferred), freeing its slot; it starts again
        through `claim`. False when it was not running (unknown, reaped or
        waiting)."""

    @abc.abstractmethod
    async def renew(self, process: str, tickets: Iterable[str]) -> list[str]:
        """Extend the leases of `process`'s `tickets` (all it holds, waiting
        and running) by `lease_s` from now, and the process's own lease.
        Returns those of `tickets` that are gone: reaped because their lease
        ran out (the process was paused or cut off) or never known. The
        caller must stop them (a running one no longer holds a slot: the
        fence)."""

    @abc.abstractmethod
    async def positions(self, process: str) -> dict[str, tuple[int, int]]:
        """{ticket: (position, waiting)} for `process`'s waiting tickets,
        positions site-wide in arrival order."""

    @abc.abstractmethod
    async def set_limits(self, limits: Limits) -> None:
        """Make `limits` (cap, queue size, per-user limits) the site's, at once;
        called when the console saves them."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """The whole state (see Snapshot), after dropping expired tickets."""

    async def set_policy(self, policy) -> None:
        """Make `policy` (an order.PriorityPolicy, or None: arrival order)
        the start order of the waiting tickets (issue #15). This default
        ignores it: the site queue in Redis keeps arrival order for now."""
        return None

    async def account(self, ticket: str, tokens: int, *, user: str | None = None) -> None:
        """Count `tokens` generated for `ticket`'s person in their fair
        share; `user` (as given to `enqueue`) names the person when the
        ticket may already be released. This default ignores it."""
        return None

    async def wakeups(self) -> AsyncIterator[str]:
        """Yield a word (what happened: 'enqueued', 'released', ...) each
        time another process may have changed what this one could claim or
        the positions it shows. Runs until cancelled; raises as the other
        methods do when the shared state cannot be reached. This default
        never yields: alone in its process, an Admission changes only
        through its own caller."""
        await asyncio.Future()
        yield ""  # pragma: no cover - never reached; makes this an async generator
