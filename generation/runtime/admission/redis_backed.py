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

from collections.abc import AsyncIterator, Iterable

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from generation.runtime.admission import scripts
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
from generation.runtime.types import ErrorCode, Limits, RequestSource

DEFAULT_PREFIX = "chatsite:admission"
KEY_NAMES = ("queue", "running", "leases", "owner", "user", "users", "seq", "limits", "rooms", "procs")


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
        self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX, lease_s: float = DEFAULT_LEASE_S
    ):
        self.client = client
        self.prefix = prefix
        self.lease_s = lease_s
        self.keys = [f"{{{prefix}}}:{name}" for name in KEY_NAMES]
        self.wake_channel = f"{{{prefix}}}:wake"
        self._scripts = {
            name: client.register_script(scripts.PRELUDE + getattr(scripts, name.upper()))
            for name in (
                "enqueue",
                "claim",
                "release",
                "defer",
                "renew",
                "positions",
                "set_limits",
                "snapshot",
            )
        }

    @classmethod
    def from_url(
        cls, url: str, *, timeout_s: float, prefix: str = DEFAULT_PREFIX, lease_s: float = DEFAULT_LEASE_S
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
        leases run out, and those requests stop with `lease_lost`."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return cls(client, prefix=prefix, lease_s=lease_s)

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
        )
        kind = _text(reply[0])
        if kind == "admitted":
            return Admitted()
        if kind == "waiting":
            return Waiting(position=int(reply[1]), waiting=int(reply[2]))
        if kind == "known":
            raise ValueError(f"ticket {ticket} is already known")
        return Refused(ErrorCode(kind))

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
        return Snapshot(
            waiting=tuple(triples(waiting)),
            running={ticket: (process, user) for ticket, process, user in triples(running)},
            users={users[i]: int(users[i + 1]) for i in range(0, len(users), 2)},
            cap=int(cap),
        )
