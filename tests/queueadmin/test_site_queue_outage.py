"""Chat goes on through a Redis outage, and the site queue comes back (issue #11).

Three daphne processes share a redis-server of this test's own, which it
stops mid-run and starts again on the same port (empty, as after a crash),
with cap 1 site-wide. While Redis is down each process admits by its own
cap; once it is back, each process rejoins the site queue by itself, which
it writes in its log, and the cap is the site's again. Every request the
clients made ended exactly once, and the database holds exactly one record
for each.
"""

import asyncio
import time

from tests.live import prepare_database, redis_server
from tests.polling import poll
from tests.queueadmin.sitecluster import (
    SEED,
    STAFF,
    Chat,
    fresh_database,
    log_says,
    processes,
    site_env,
    stored_records,
)

NAMES = ["alpha", "beta", "gamma"]
# What each process logs when it falls back to its own queue, and when it
# rejoins the site queue (generation.runtime.sitequeue).
FELL_BACK = "limits are per process until it is back"
REJOINED = "the site queue is reachable again"
REJOIN_BOUND_S = 30  # generous: a process tries Redis again every 2 s


async def test_chat_goes_on_through_a_redis_outage(tiny_model_dir, tmp_path):
    """Redis stops while one reply runs and two wait for the site's slot:
    those two start on their own processes, and new chats work on every
    process. Redis back: every process rejoins, a request that waited on
    its process through the return starts when its process has room, and
    on every process a request waits for one running on the next."""
    with redis_server(tmp_path) as redis, fresh_database() as database:
        env = site_env(database, redis.port, tiny_model_dir, GENERATION_MAX_CONCURRENCY="1")
        sessions = prepare_database(env, SEED)
        with processes(env, tmp_path, NAMES, sessions[STAFF]) as bases:
            chats: list[Chat] = []

            async def chat(process: str, user: int) -> Chat:
                opened = await Chat.open(bases, process, sessions[f"u{user}"])
                chats.append(opened)
                return opened

            try:
                running, first, second = [
                    await chat(name, user) for name, user in zip(NAMES, (0, 1, 2), strict=True)
                ]
                assert (await running.ask())["type"] == "started"
                assert [_place(await c.ask()) for c in (first, second)] == [
                    ("queued", 1, 1),
                    ("queued", 2, 2),
                ]

                redis.stop()
                stopped = time.monotonic()
                # The two that waited for the site's one slot start on their
                # processes, and the one that ran goes on streaming.
                assert [(await c.next("started"))["type"] for c in (first, second)] == ["started"] * 2
                assert [(await c.streams(after=stopped))["type"] for c in (running, first, second)] == [
                    "token"
                ] * 3
                assert [(await c.end())["type"] for c in (running, first, second)] == ["done"] * 3
                await asyncio.to_thread(poll, lambda: log_says(tmp_path, NAMES, FELL_BACK), 10)

                # New chats during the outage, on every process; one more
                # waits on gamma behind gamma's own running reply.
                fresh = [await chat(name, user) for name, user in zip(NAMES, (3, 4, 5), strict=True)]
                assert [(await c.ask())["type"] for c in fresh] == ["started"] * 3
                behind = await chat("gamma", 6)
                assert _place(await behind.ask()) == ("queued", 1, 1)
                assert [(await c.end())["type"] for c in fresh[:2]] == ["done"] * 2

                redis.start()
                await asyncio.to_thread(poll, lambda: log_says(tmp_path, NAMES, REJOINED), REJOIN_BOUND_S)
                print(f"Redis down for {time.monotonic() - stopped:.1f} s in all; every process rejoined")
                assert (await fresh[2].end())["type"] == "done"
                assert (await behind.next("started"))["type"] == "started"
                assert (await behind.end())["type"] == "done"

                # The cap of 1 is the site's again, on every process.
                for holder_name, waiter_name, users in zip(
                    NAMES, NAMES[1:] + NAMES[:1], ((7, 8), (9, 10), (11, 12)), strict=True
                ):
                    holder, waiter = await chat(holder_name, users[0]), await chat(waiter_name, users[1])
                    assert (await holder.ask())["type"] == "started"
                    assert _place(await waiter.ask()) == ("queued", 1, 1)
                    assert (await holder.end())["type"] == "done"
                    assert (await waiter.next("started"))["type"] == "started"
                    assert (await waiter.end())["type"] == "done"

                # Every request ended once for its client and is stored once.
                requests = [request for c in chats for request in c.requests()]
                assert [c.endings() for c in chats] == [dict.fromkeys(c.requests(), 1) for c in chats]
                records = await asyncio.to_thread(stored_records, env, set(requests))
                assert sorted(row["request"] for row in records) == sorted(requests)
                assert {row["outcome"] for row in records} == {"cancelled"}
            finally:
                for opened in chats:
                    await opened.close()


def _place(frame: dict) -> tuple:
    """(type, position, waiting) of a first frame; None for what it lacks."""
    return frame["type"], frame.get("position"), frame.get("waiting")
