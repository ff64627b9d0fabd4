"""Who starts next: priority classes, ageing and fair shares (issue #15).

One pure ordering function, `start_order`, used by the per-process queue
(GenerationService), by LocalAdmission (the reference model) and meant to be
mirrored by the site queue's scripts. Nothing here imports Django or does I/O;
time is always passed in (seconds, any monotonic origin).

The order, for the waiting requests of one queue:

1. A request deferred back to the head (the engine was busy) comes first.
2. Overdue requests, in arrival order. A request is overdue once it has
   waited at least (level + 1) x `ageing_s`, where level is its class's
   place among the classes (0 the best). So no request waits behind a later
   arrival once it has waited `len(levels) x ageing_s`: the starvation bound.
3. The rest by their class's effective level (`class_levels`: the level
   minus one per `ageing_s` that the class has had a request waiting and
   none started), so classes are strict at admission and ageing moves a
   waiting class up one class per interval; then, inside a level, by fair
   share: the person with the least decayed service first (tokens
   generated, VTC: Sheng et al., "Fairness in Serving Large Language
   Models", OSDI 2024), then the fewest of that person's requests ahead
   (running ones and earlier waiting ones, so two people take turns), then
   arrival.

With no classes (an empty `PriorityPolicy`) the order is arrival order, as
before issue #15: nothing changes until staff define a class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from generation.runtime.types import RequestSource

DEFAULT_AGEING_S = 60.0
"""Seconds of waiting that lift a request one class (GENERATION_PRIORITY_AGEING_S)."""
DEFAULT_HALF_LIFE_S = 300.0
"""Half-life of a person's counted service, in seconds
(GENERATION_FAIR_SHARE_HALF_LIFE_S)."""
DEFAULT_RANK = 100
"""The rank of a request that belongs to no class, unless a class named
DEFAULT_CLASS gives it another."""
DEFAULT_CLASS = "default"


@dataclass(frozen=True)
class PriorityClass:
    """One class of requests, resolved for the runtime: `rank` (lower starts
    first), `users` (person ids as strings: the members of its groups, and
    the staff when it counts staff), `api` (every API request belongs). A
    class with no members and not `api` is empty, except the class named
    DEFAULT_CLASS, which holds everyone who belongs to no other class."""

    name: str
    rank: int
    users: frozenset[str] = frozenset()
    api: bool = False

    def holds(self, person: str, source: RequestSource) -> bool:
        """Whether a request of `person` from `source` belongs here."""
        return person in self.users or (self.api and source is RequestSource.API)

    def as_dict(self) -> dict:
        """JSON-safe form (the channel layer)."""
        return {"name": self.name, "rank": self.rank, "users": sorted(self.users), "api": self.api}


@dataclass(frozen=True)
class PriorityPolicy:
    """The classes in force and the ageing interval. Falsy when it has no
    class: then the order is plain arrival order."""

    classes: tuple[PriorityClass, ...] = ()
    ageing_s: float = DEFAULT_AGEING_S
    levels: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        ranks = {c.rank for c in self.classes}
        ranks.add(self.default_rank)
        object.__setattr__(self, "levels", tuple(sorted(ranks)))

    def __bool__(self) -> bool:
        return bool(self.classes)

    @property
    def default_rank(self) -> int:
        """The rank of a request in no class."""
        for c in self.classes:
            if c.name == DEFAULT_CLASS:
                return c.rank
        return DEFAULT_RANK

    def class_of(self, person: str, source: RequestSource) -> tuple[str, int]:
        """(name, rank) of the best class a request of `person` from
        `source` belongs to; (DEFAULT_CLASS, default_rank) for none."""
        held = [(c.rank, c.name) for c in self.classes if c.holds(str(person), source)]
        if not held:
            return (DEFAULT_CLASS, self.default_rank)
        rank, name = min(held)
        return (name, rank)

    def level(self, person: str, source: RequestSource) -> int:
        """The place (0 the best) of the request's class among the ranks."""
        return self.levels.index(self.class_of(person, source)[1])

    def as_dict(self) -> dict:
        """JSON-safe form, read back by `from_dict`."""
        return {"classes": [c.as_dict() for c in self.classes], "ageing_s": self.ageing_s}

    @classmethod
    def from_dict(cls, data: Mapping) -> PriorityPolicy:
        """Read `as_dict`'s form."""
        classes = tuple(
            PriorityClass(
                name=str(c["name"]),
                rank=int(c["rank"]),
                users=frozenset(str(u) for u in c.get("users", ())),
                api=bool(c.get("api", False)),
            )
            for c in data.get("classes", ())
        )
        return cls(classes=classes, ageing_s=float(data.get("ageing_s", DEFAULT_AGEING_S)))


@dataclass(frozen=True)
class Waiter:
    """A waiting request as the order sees it: its `ticket`, the `person`
    it counts for in fair shares, its class `level` (PriorityPolicy.level),
    when it `arrived` (seconds, the clock of `now`), and `head` when it was
    deferred back to the head of the queue."""

    ticket: str
    person: str
    level: int = 0
    arrived: float = 0.0
    head: bool = False


def _lifted(level: int, since: float, now: float, ageing_s: float) -> int:
    """`level` lifted one per `ageing_s` from `since` to `now` (no lift
    with ageing off)."""
    waited = max(now - since, 0.0)
    return level - math.floor(waited / ageing_s) if ageing_s > 0 else level


def effective_level(waiter: Waiter, now: float, ageing_s: float) -> int:
    """`waiter`'s level lifted one per `ageing_s` waited; below 0 means
    overdue (see the module docstring)."""
    return _lifted(waiter.level, waiter.arrived, now, ageing_s)


def class_levels(
    waiters: Sequence[Waiter], now: float, ageing_s: float, served: Mapping[int, float] | None = None
) -> dict[int, int]:
    """{level: the level its class waits at now}, for the levels of
    `waiters`: each class rises one level per `ageing_s` that it has had a
    request waiting (not deferred) and none of its requests started, never
    above 0. `served` is when a request of each level last started (the
    clock of `now`; missing: never).

    Ageing lifts the class, not the one request, so that the slot the wait
    earned goes to whoever of the class is next by fair share, and a start
    spends the lift, so that a class earns one slot per interval as a single
    aged request did. Lifting each request by its own wait let a heavy user's
    aged backlog pass the others of their class whatever tokens each had
    received (issue #15's bench: 1.7x to 1.8x their fair share)."""
    served = served or {}
    lifted: dict[int, int] = {}
    for waiter in waiters:
        if waiter.head:
            continue
        since = max(waiter.arrived, served.get(waiter.level, waiter.arrived))
        level = _lifted(waiter.level, since, now, ageing_s)
        lifted[waiter.level] = min(lifted.get(waiter.level, waiter.level), max(level, 0))
    return lifted


def start_order(
    waiters: Sequence[Waiter],
    *,
    now: float,
    policy: PriorityPolicy | None,
    service: Mapping[str, float] | None = None,
    running: Mapping[str, int] | None = None,
    served: Mapping[int, float] | None = None,
) -> list[str]:
    """The tickets of `waiters` (given in arrival order) in the order they
    should start (see the module docstring). `service` is each person's
    decayed service at `now` (FairShare.values; missing: 0), `running`
    how many requests each person has running and `served` when a request
    of each level last started (class_levels). Arrival order when `policy`
    is None or has no class."""
    if not policy:
        heads = [w.ticket for w in waiters if w.head]
        return heads + [w.ticket for w in waiters if not w.head]
    service = service or {}
    ahead = dict(running or {})
    lifted = class_levels(waiters, now, policy.ageing_s, served)
    keys = []
    for index, waiter in enumerate(waiters):
        turn = ahead.get(waiter.person, 0)
        ahead[waiter.person] = turn + 1
        if waiter.head:
            key = (0, 0, 0.0, 0, index)
        elif effective_level(waiter, now, policy.ageing_s) < 0:
            key = (1, 0, 0.0, 0, index)
        else:
            key = (2, lifted[waiter.level], service.get(waiter.person, 0.0), turn, index)
        keys.append((key, waiter.ticket))
    keys.sort()
    return [ticket for _, ticket in keys]


class FairShare:
    """Each person's service (tokens generated for them), decayed with
    `half_life_s` (0: no decay), for the order inside a class. A person who
    becomes active (`join`) is lifted to the least service of the people of
    their class active now, so idle time banks no credit (VTC's counter
    lift). Not thread-safe; one per queue."""

    def __init__(self, half_life_s: float = DEFAULT_HALF_LIFE_S):
        self.half_life_s = half_life_s
        self._counts: dict[str, tuple[float, float]] = {}  # person -> (value, at)

    def value(self, person: str, now: float) -> float:
        """`person`'s decayed service at `now` (tokens)."""
        value, at = self._counts.get(person, (0.0, now))
        if self.half_life_s <= 0:
            return value
        return value * 0.5 ** (max(now - at, 0.0) / self.half_life_s)

    def values(self, people: Iterable[str], now: float) -> dict[str, float]:
        """{person: decayed service at `now`} for `people`."""
        return {person: self.value(person, now) for person in people}

    def charge(self, person: str, tokens: int, now: float) -> None:
        """Count `tokens` more generated for `person`."""
        if tokens > 0:
            self._counts[person] = (self.value(person, now) + tokens, now)

    def join(
        self, person: str, active: Iterable[str], now: float, *, peers: Iterable[str] | None = None
    ) -> None:
        """`person` becomes active (their first waiting or running request)
        while `active` (other people) are: lift them to the least service
        among `peers` (the active people of the class their request is in;
        default: all of `active`), so that idle time banks them no credit
        (VTC's counter lift; a debt above that least they keep, decaying).
        Also forgets people whose service decayed below one token."""
        active = set(active)
        peers = active if peers is None else set(peers)
        others = [self.value(p, now) for p in peers if p != person]
        own = self.value(person, now)
        lifted = max(own, min(others)) if others else own
        self._counts = {
            p: (self.value(p, now), now) for p in self._counts if p in active or self.value(p, now) >= 1.0
        }
        if lifted > 0:
            self._counts[person] = (lifted, now)
        else:
            self._counts.pop(person, None)
