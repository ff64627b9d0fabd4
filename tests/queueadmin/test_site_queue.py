"""One queue for the whole site, across real daphne processes (issue #11).

Three daphne processes ("alpha", "beta", "gamma") share a redis-server of
this module's own and one PostgreSQL database, with cap 2 and the tiny model. Each
person's message is sent only once the previous one reached the site queue
(its first queued or started frame came), so the arrival order is the send
order. Replies run until their client cancels them, so a test decides how
long each holds its slot.

What is checked is what people would notice: the number of replies running
at once on the whole site (from the records every process stored), the
positions each waiting person sees, the order in which replies start, a
second tab of one person on another process, and a process that dies
holding slots. Numbers measured on this noisy machine are printed, not
asserted, except for generous bounds.
"""

import asyncio
import time

import pytest

from tests.live import daphne_process, prepare_database, redis_server
from tests.queueadmin.sitecluster import (
    LEASE_S,
    SEED,
    STAFF,
    Chat,
    fresh_database,
    most_at_once,
    processes,
    site_env,
    started_out_of_turn,
    stored_records,
    wait_ready,
)

NAMES = ["alpha", "beta", "gamma"]
HOLD_S = 0.3  # how long each reply runs once it streams, before its client cancels it
KILL_BOUND_S = 30  # generous: the lease is 2 s, a claim polls every second


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    """The three processes, for the whole module; yields (env, {name: base
    URL}, {user: session key}, folder)."""
    folder = tmp_path_factory.mktemp("site-queue")
    with redis_server(folder) as redis, fresh_database() as database:
        env = site_env(database, redis.port, tiny_model_dir)
        sessions = prepare_database(env, SEED)
        with processes(env, folder, NAMES, sessions[STAFF]) as bases:
            yield env, bases, sessions, folder


async def test_two_run_at_once_on_the_site_in_arrival_order(cluster):
    """Nine people spread over three processes with cap 2: two start, the
    other seven see positions 1..7 as they arrive, replies start in arrival
    order, and the records of all processes never overlap more than two."""
    env, bases, sessions, _ = cluster
    chats = [await Chat.open(bases, NAMES[index % 3], sessions[f"u{index}"]) for index in range(9)]
    try:
        firsts = [await chat.ask() for chat in chats]
        assert [frame["type"] for frame in firsts] == ["started"] * 2 + ["queued"] * 7
        assert [(frame["position"], frame["waiting"]) for frame in firsts[2:]] == [
            (k, k) for k in range(1, 8)
        ]

        async def hold_then_end(chat: Chat, first: dict) -> dict:
            if first["type"] != "started":
                assert (await chat.next("started"))["type"] == "started"
            await chat.next("token")
            await asyncio.sleep(HOLD_S)
            return await chat.end()

        began = time.monotonic()
        ends = await asyncio.gather(*map(hold_then_end, chats, firsts))
        print(f"nine replies at cap 2 over three processes: {time.monotonic() - began:.1f} s")
        assert [(end["type"], end["finish_reason"]) for end in ends] == [("done", "cancelled")] * 9
        for chat in chats[2:]:
            positions = chat.positions()
            assert positions == sorted(positions, reverse=True), positions  # never moves back

        requests = [chat.request for chat in chats]
        records = await asyncio.to_thread(stored_records, env, set(requests))
        records = [row for row in records if row["request"] in requests]
        assert sorted((row["request"], row["worker"]) for row in records) == sorted(
            (chat.request, chat.process) for chat in chats
        )
        assert most_at_once(records) == 2
        by_request = {row["request"]: row for row in records}
        assert started_out_of_turn([by_request[request] for request in requests], cap=2) == []
    finally:
        for chat in chats:
            await chat.close()


async def test_one_person_on_two_processes_is_busy_on_the_second(cluster):
    """A second tab of one person, on another process, is refused `busy`
    while the first tab's reply runs, and may ask once it ended."""
    _, bases, sessions, _ = cluster
    first = await Chat.open(bases, "alpha", sessions["u10"])
    second = await Chat.open(bases, "beta", sessions["u10"])
    try:
        assert (await first.ask())["type"] == "started"
        refused = await second.ask()
        assert (refused["type"], refused["code"]) == ("error", "busy")
        assert (await first.end())["type"] == "done"
        assert (await second.ask())["type"] == "started"
        assert (await second.end())["type"] == "done"
    finally:
        await first.close()
        await second.close()


async def test_a_killed_process_gives_its_slots_back(cluster):
    """A fourth process holds both slots and is killed (SIGKILL): once its
    lease runs out, the two people waiting on alpha and beta start."""
    env, bases, sessions, folder = cluster
    with daphne_process({**env, "GENERATION_WORKER_NAME": "delta"}, folder / "delta.log") as (delta, server):
        await asyncio.to_thread(wait_ready, [delta], sessions[STAFF])
        everyone = {**bases, "delta": delta}
        holders = [await Chat.open(everyone, "delta", sessions[f"u{index}"]) for index in (11, 12)]
        waiters = [
            await Chat.open(everyone, name, sessions[f"u{index}"])
            for name, index in (("alpha", 13), ("beta", 14))
        ]
        try:
            assert [(await chat.ask())["type"] for chat in holders] == ["started", "started"]
            firsts = [await chat.ask() for chat in waiters]
            assert [(frame["type"], frame["position"]) for frame in firsts] == [("queued", 1), ("queued", 2)]

            server.kill()
            killed = time.monotonic()
            started = [await chat.next("started", timeout=KILL_BOUND_S) for chat in waiters]
            assert [frame["type"] for frame in started] == ["started", "started"]
            waited = [chat.time_of(frame) - killed for chat, frame in zip(waiters, started, strict=True)]
            print(f"slots back after kill -9 (lease {LEASE_S} s): " + ", ".join(f"{s:.2f} s" for s in waited))
            assert [(await chat.end())["type"] for chat in waiters] == ["done", "done"]
        finally:
            for chat in [*holders, *waiters]:
                await chat.close()
