"""How long site-wide admission takes, on a local redis-server of its own.

Run: `.venv/bin/python -m tests.generation.admission_latency [rounds]`.
Prints p50/p95/max milliseconds, measured with time.perf_counter around:

- `enqueue+claim`: enqueue with no local room (the ticket waits), then the
  claim that starts it: the two round trips of a request that waits;
- `enqueue (admitted)`: enqueue with room on an idle site, the one round
  trip of a request that starts at once (issue #11's "submit to start when a
  slot is free");
- the same two with 16 clients at once (one asyncio task each, one shared
  connection pool), as 16 chat users submitting together would.

Each round releases its ticket afterwards (not timed). The issue's bar:
global admission adds at most 5 ms p95 at 16 clients.
"""

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio

from generation.runtime.admission import Admitted, RedisAdmission
from generation.runtime.types import Limits
from tests.live import redis_server

LIMITS = Limits(max_concurrency=64, max_queue_size=64, max_active_per_user=1)


async def one_round(admission: RedisAdmission, ticket: str, process: str, *, wait: bool) -> float:
    began = time.perf_counter()
    if wait:
        await admission.enqueue(ticket, process, ticket, LIMITS, local_free=0)
        assert await admission.claim(process, local_free=1) == [ticket]
    else:
        assert await admission.enqueue(ticket, process, ticket, LIMITS, local_free=1) == Admitted()
    elapsed = time.perf_counter() - began
    await admission.release(ticket)
    return elapsed * 1000


async def measure(port: int, rounds: int, clients: int, *, wait: bool) -> list[float]:
    client = redis.asyncio.Redis(port=port, max_connections=clients + 1)
    admission = RedisAdmission(client, prefix="latency")
    await admission.set_limits(LIMITS)
    times: list[float] = []

    async def worker(number: int) -> None:
        for i in range(rounds // clients):
            times.append(await one_round(admission, f"c{number}-{i}", f"p{number}", wait=wait))

    await asyncio.gather(*(worker(n) for n in range(clients)))
    await client.aclose()
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"p50 {statistics.median(ordered):.2f} ms, p95 {p95:.2f} ms, max {ordered[-1]:.2f} ms (n={len(ordered)})"


async def main(port: int, rounds: int) -> None:
    for clients in (1, 16):
        for wait, label in ((True, "enqueue+claim"), (False, "enqueue (admitted)")):
            await measure(port, clients * 20, clients, wait=wait)  # warm up: scripts loaded
            times = await measure(port, rounds, clients, wait=wait)
            print(f"{label:20} {clients:2} client(s): {summary(times)}")


if __name__ == "__main__":
    with redis_server(Path(tempfile.mkdtemp())) as server:
        asyncio.run(main(server.port, int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
