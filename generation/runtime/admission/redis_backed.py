"""Site-wide admission in Redis: one Lua script per operation.

`RedisAdmission` is the Admission every process of the site shares when
`REDIS_URL` is set (wiring: issue #11). Its state lives in Redis under keys
that share one hash tag, `{<prefix>}:<name>`, so that a Redis Cluster keeps
them in one slot and a script may touch them all; the scripts and the keys
are described in generation.runtime.admission.scripts. Scripts are
registered with redis-py's `register_script` (run by SHA, loaded again by
redis-py when Redis restarted and forgot them).

Each call is one round trip. Every operation raises redis.RedisError (a
ConnectionError or TimeoutError) when Redis is unreachable; the caller
falls back to its own LocalAdmission. The client `from_url` builds retries
a ConnectionError once, at once, on a fresh connection (a pooled one
outlived a Redis restart); nothing else is retried.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from generation.runtime.admission import priority_scripts, scripts
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
from generation.runtime.admission.order import DEFAULT_HALF_LIFE_S, PriorityPolicy
from generation.runtime.types import ErrorCode, Limits, RequestSource

DEFAULT_PREFIX = "chatsite:admission"
KEY_NAMES = ("queue", "running", "leases", "owner", "user", "users", "seq", "limits", "rooms", "procs")
# The start order's keys (issue #15, priority_scripts), after the others.
PRIORITY_KEY_NAMES = ("prio", "arrived", "fair")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisAdmission(Admission):
    """Admission shared through the Redis that `client` (a redis.asyncio
    client, with or without decode_responses) talks to. `prefix` names the
    keys (tests use their own); `lease_s` is the lease of every ticket, in
    seconds (DEFAULT_LEASE_S; Redis counts it in milliseconds). `wake_channel`
    is `{prefix}:wake`: the scripts PUBLISH on it after an enqueue, a
    release, a deferral, a reap, a claim that started tickets and a limits
    change, so that processes can claim (and show positions) without
    waiting for their next poll."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_s: float = DEFAULT_LEASE_S,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
    ):
        self.client = client
        self.prefix = prefix
        self.lease_s = lease_s
        self.half_life_s = half_life_s
        self.keys = [f"{{{prefix}}}:{name}" for name in KEY_NAMES + PRIORITY_KEY_NAMES]
        self.wake_channel = f"{{{prefix}}}:wake"
        modules = {"set_policy_order": priority_scripts, "account": priority_scripts}
        self._scripts = {
            name: client.register_script(
                priority_scripts.FUNCTIONS
                + scripts.PRELUDE
                + getattr(modules.get(name, scripts), name.removesuffix("_order").upper())
            )
            for name in (
                "enqueue",
                "bind",
                "spare",
                "claim",
                "release",
                "defer",
                "renew",
                "positions",
                "set_limits",
                "snapshot",
                "set_policy_order",
                "account",
            )
        }

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float,
        prefix: str = DEFAULT_PREFIX,
        lease_s: float = DEFAULT_LEASE_S,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
    ) -> RedisAdmission:
        """The RedisAdmission a process of the site uses (the registry builds
        it when REDIS_URL is set): a client of the Redis at `url` whose
        connect and each reply wait at most `timeout_s` seconds, so that an
        unresponsive Redis sends the process to its own queue within about
        that long. Contacts nothing until the first call.

        After Redis restarted, a pooled connection from before is dead but
        does not know it until used; its first command fails with a
        ConnectionError. redis-py's Retry then closes it and sends the
        command once more, at once, on a fresh connection, so the call
        succeeds and the process stays on the site queue. Only a
        ConnectionError is retried (a refused connect costs nothing); a
        TimeoutError is not, so an unresponsive Redis costs one timeout.
        The price: a command that Redis ran but whose reply a broken
        connection lost (Redis up, the connection killed in between) runs
        twice; an enqueue then answers "known" (ValueError), and the site
        queue resyncs as after an outage (sitequeue.SiteQueue). A claim run
        twice starts the tickets of the lost reply at the site only; their
        leases run out, and those requests stop with `lease_lost`; a bind
        run twice finds its spare gone, and its reply stops `lease_lost` too.
        `half_life_s`: the fair shares' decay (issue #15)."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return cls(client, prefix=prefix, lease_s=lease_s, half_life_s=half_life_s)

    async def _run(self, name: str, *args) -> object:
        lease_ms = max(round(self.lease_s * 1000), 1)
        return await self._scripts[name](keys=self.keys, args=[self.wake_channel, lease_ms, *args])

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
        reply = await self._run(
            "enqueue",
            ticket,
            process,
            counted_user(user, source),
            local_free,
            limits.max_concurrency,
            limits.max_queue_size,
            limits.max_active_per_user,
            int(rejoin),
            limits.max_active_api_per_user,
            Limits.PER_USER_FIELD[source],
            *spares,
        )
        kind = _text(reply[0])
        if kind == "admitted":
            return Admitted(spares=tuple(_text(spare) for spare in reply[1:]))
        if kind == "waiting":
            return Waiting(position=int(reply[1]), waiting=int(reply[2]))
        if kind == "known":
            raise ValueError(f"ticket {ticket} is already known")
        return Refused(ErrorCode(kind))

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
        reply = await self._run(
            "bind",
            spare,
            ticket,
            process,
            counted_user(user, source),
            Limits.PER_USER_FIELD[source],
            local_free,
            *spares,
        )
        kind = _text(reply[0])
        if kind == "bound":
            return Admitted(spares=tuple(_text(spare) for spare in reply[1:]))
        return Refused(ErrorCode.BUSY if kind == "busy" else ErrorCode.LEASE_LOST)

    async def spare(self, process: str, local_free: int, spares: Sequence[str]) -> tuple[str, ...]:
        return tuple(_text(spare) for spare in await self._run("spare", process, local_free, *spares))

    async def claim(self, process: str, local_free: int) -> list[str]:
        return [_text(ticket) for ticket in await self._run("claim", process, local_free)]

    async def release(self, ticket: str) -> bool:
        return bool(await self._run("release", ticket))

    async def defer(self, ticket: str) -> bool:
        return bool(await self._run("defer", ticket))

    async def renew(self, process: str, tickets: Iterable[str]) -> list[str]:
        return [_text(ticket) for ticket in await self._run("renew", process, *tickets)]

    async def positions(self, process: str) -> dict[str, tuple[int, int]]:
        waiting, mine = await self._run("positions", process)
        return {_text(mine[i]): (int(mine[i + 1]), int(waiting)) for i in range(0, len(mine), 2)}

    async def set_limits(self, limits: Limits) -> None:
        await self._run(
            "set_limits",
            limits.max_concurrency,
            limits.max_queue_size,
            limits.max_active_per_user,
            limits.max_active_api_per_user,
        )

    async def set_policy(self, policy: PriorityPolicy | None) -> None:
        """Make `policy` the site queue's start order (issue #15): each
        listed person's class level for chat and API requests, and the
        level of everyone else, go to Redis; None or an empty policy:
        arrival order."""
        args = [int(bool(policy)), 0, round(self.half_life_s * 1000)]
        if policy:
            args[1] = round(policy.ageing_s * 1000)
            people = {person for c in policy.classes for person in c.users}
            for side, source in (("c", RequestSource.CHAT), ("a", RequestSource.API)):
                args += [f"{side}:*", policy.level("\0nobody", source)]
                for person in sorted(people):
                    args += [f"{side}:{person}", policy.level(person, source)]
        await self._run("set_policy_order", *args)

    async def account(self, ticket: str, tokens: int, *, user: str | None = None) -> None:
        """Count `tokens` generated for `ticket`'s person (`user` when the
        ticket is already released)."""
        if tokens > 0:
            await self._run("account", ticket, tokens, "" if user is None else str(user))

    async def wakeups(self) -> AsyncIterator[str]:
        """Yield the word of each PUBLISH on the wake-up channel (SUBSCRIBE on
        a connection of its own). Raises redis.RedisError when the connection
        breaks; the caller subscribes again."""
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.wake_channel)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    yield _text(message["data"])
        finally:
            await pubsub.aclose()

    async def snapshot(self) -> Snapshot:
        waiting, running, users, cap = await self._run("snapshot")

        def triples(flat):
            flat = [_text(value) for value in flat]
            return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]

        users = [_text(value) for value in users]
        running = triples(running)
        return Snapshot(
            waiting=tuple(triples(waiting)),
            running={ticket: (process, user) for ticket, process, user in running if user},
            spares={ticket: process for ticket, process, user in running if not user},
            users={users[i]: int(users[i + 1]) for i in range(0, len(users), 2)},
            cap=int(cap),
        )
