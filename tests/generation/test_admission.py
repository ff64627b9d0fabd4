"""Admission of requests across processes (issue #11), on a real Redis.

Every test runs twice: against RedisAdmission on a redis-server of this
module's own (keys under a prefix of the test's own), and against
LocalAdmission, the in-process reference model, which must behave the same.
The "processes" are names, as several daphne processes would give; what is
checked is what people would notice: who starts, in which order, at which
position they wait, who is refused, and when a dead process's slots return.
"""

import asyncio
import time
import uuid

import pytest
import redis.asyncio

from generation.runtime.admission import (
    Admitted,
    LocalAdmission,
    RedisAdmission,
    Refused,
    Waiting,
)
from generation.runtime.types import ErrorCode, Limits, RequestSource
from tests.live import redis_server

SHORT_LEASE_S = 1.0


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A redis-server for this module; each test keeps to its own key prefix."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.port


@pytest.fixture(params=["redis", "local"])
async def make_admission(request, redis_port):
    """Build admissions of the kind under test (all sharing one Redis prefix,
    as the processes of one site do; a local one is one shared object)."""
    clients, prefix, shared = [], f"test-{uuid.uuid4().hex}", {}

    def make(lease_s: float = 5.0):
        if request.param == "local":
            return shared.setdefault(lease_s, LocalAdmission(lease_s=lease_s))
        client = redis.asyncio.Redis(port=redis_port)
        clients.append(client)
        return RedisAdmission(client, prefix=prefix, lease_s=lease_s)

    yield make
    for client in clients:
        await client.aclose()


async def setup(admission, **limits) -> Limits:
    limits = Limits(**limits)
    await admission.set_limits(limits)
    return limits


async def test_requests_start_in_arrival_order_across_three_processes(make_admission):
    """Cap 2 and nine users on three processes: two start at once, the other
    seven wait at positions 1..7, and as replies end they start in arrival
    order, never more than two at a time."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=2, max_queue_size=20)
    processes = ["p1", "p2", "p3"]
    tickets = [(f"t{i}", processes[i % 3], f"user{i}") for i in range(9)]
    results = [await admission.enqueue(t, p, u, limits, local_free=4) for t, p, u in tickets]
    assert results[:2] == [Admitted(), Admitted()]
    assert results[2:] == [Waiting(position=i, waiting=i) for i in range(1, 8)]

    positions = {}
    for process in processes:
        positions.update(await admission.positions(process))
    assert sorted(positions.values()) == [(i, 7) for i in range(1, 8)]
    assert [t for t, _ in sorted(positions.items(), key=lambda item: item[1])] == [
        f"t{i}" for i in range(2, 9)
    ]

    started, running = ["t0", "t1"], {"t0": "p1", "t1": "p2"}
    while len(started) < 9:
        await admission.release(started[len(started) - 2])
        running.pop(started[len(started) - 2])
        for process in processes:
            for ticket in await admission.claim(process, local_free=4):
                started.append(ticket)
                running[ticket] = process
            assert len(running) <= 2
    assert started == [f"t{i}" for i in range(9)]


async def test_positions_close_up_when_someone_cancels(make_admission):
    """A cancel in the middle of the queue moves everyone behind it up, on
    every process."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=1, max_queue_size=10)
    for i in range(5):
        await admission.enqueue(f"t{i}", f"p{i % 2}", f"user{i}", limits, local_free=1)
    assert await admission.release("t2") is True
    assert await admission.positions("p0") == {"t4": (3, 3)}
    assert await admission.positions("p1") == {"t1": (1, 3), "t3": (2, 3)}
    assert await admission.release("t2") is False


async def test_a_person_with_two_tabs_on_two_processes_is_busy(make_admission):
    """max_active_per_user counts a person's requests on every process."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=4, max_active_per_user=1)
    assert await admission.enqueue("a1", "p1", "alice", limits, local_free=2) == Admitted()
    assert await admission.enqueue("a2", "p2", "alice", limits, local_free=2) == Refused(ErrorCode.BUSY)
    assert await admission.enqueue("b1", "p2", "bob", limits, local_free=2) == Admitted()
    await admission.release("a1")
    assert await admission.enqueue("a3", "p2", "alice", limits, local_free=2) == Admitted()


async def test_api_requests_have_their_own_per_user_limit(make_admission):
    """A person's API requests count apart from their chat replies, against
    max_active_api_per_user, on every process; a raised limit applies to
    the next request."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=8, max_active_per_user=1, max_active_api_per_user=2)
    api = RequestSource.API

    async def enqueue(ticket, process, **kwargs):
        return await admission.enqueue(ticket, process, "alice", limits, local_free=4, **kwargs)

    assert await enqueue("chat1", "p1") == Admitted()
    assert await enqueue("api1", "p1", source=api) == Admitted()
    assert await enqueue("api2", "p2", source=api) == Admitted()
    assert await enqueue("api3", "p2", source=api) == Refused(ErrorCode.BUSY)
    assert await enqueue("chat2", "p2") == Refused(ErrorCode.BUSY)
    assert (await admission.snapshot()).users == {"alice": 1, "alice:api": 2}
    limits = await setup(admission, max_concurrency=8, max_active_per_user=1, max_active_api_per_user=3)
    assert await enqueue("api4", "p2", source=api) == Admitted()
    await admission.release("chat1")
    assert await enqueue("chat3", "p1") == Admitted()
    assert await enqueue("api5", "p1", source=api) == Refused(ErrorCode.BUSY)


async def test_queue_full_is_decided_site_wide(make_admission):
    admission = make_admission()
    limits = await setup(admission, max_concurrency=1, max_queue_size=2)
    assert await admission.enqueue("t0", "p1", "u0", limits, local_free=1) == Admitted()
    assert await admission.enqueue("t1", "p2", "u1", limits, local_free=1) == Waiting(1, 1)
    assert await admission.enqueue("t2", "p3", "u2", limits, local_free=1) == Waiting(2, 2)
    assert await admission.enqueue("t3", "p1", "u3", limits, local_free=1) == Refused(ErrorCode.QUEUE_FULL)


async def test_a_cap_change_applies_at_once(make_admission):
    """A higher cap starts waiting requests on the next claim; a lower one
    lets the running finish and starts nothing until they are under it."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=1, max_queue_size=10)
    for i in range(4):
        await admission.enqueue(f"t{i}", "p1", f"u{i}", limits, local_free=8)
    assert await admission.claim("p1", local_free=7) == []
    await setup(admission, max_concurrency=3, max_queue_size=10)
    assert await admission.claim("p1", local_free=7) == ["t1", "t2"]
    await setup(admission, max_concurrency=1, max_queue_size=10)
    await admission.release("t0")
    assert await admission.claim("p1", local_free=6) == []
    assert (await admission.snapshot()).cap == 1
    await admission.release("t1")
    await admission.release("t2")
    assert await admission.claim("p1", local_free=8) == ["t3"]


async def test_release_frees_the_slot_at_once(make_admission):
    admission = make_admission()
    limits = await setup(admission, max_concurrency=1)
    await admission.enqueue("t0", "p1", "u0", limits, local_free=1)
    await admission.enqueue("t1", "p2", "u1", limits, local_free=1)
    assert await admission.claim("p2", local_free=1) == []
    await admission.release("t0")
    assert await admission.claim("p2", local_free=1) == ["t1"]


async def test_a_locally_full_process_does_not_block_the_queue(make_admission):
    """The head ticket's process has no room: the ticket behind it, on a
    process with room, starts; the head keeps position 1 and starts when its
    process has room."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=2)
    assert await admission.enqueue("head", "p1", "u0", limits, local_free=0) == Waiting(1, 1)
    assert await admission.enqueue("next", "p2", "u1", limits, local_free=1) == Waiting(2, 2)
    assert await admission.claim("p2", local_free=1) == ["next"]
    assert await admission.positions("p1") == {"head": (1, 1)}
    assert await admission.claim("p1", local_free=1) == ["head"]


async def test_a_slot_granted_to_another_process_is_not_taken(make_admission):
    """FIFO across processes: the only free slot belongs to the older ticket
    of p2 (which has room) until p2 claims it; p1's newer ticket waits."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=1)
    await admission.enqueue("running", "p3", "u0", limits, local_free=1)
    await admission.enqueue("older", "p2", "u1", limits, local_free=1)
    await admission.enqueue("newer", "p1", "u2", limits, local_free=1)
    await admission.release("running")
    assert await admission.claim("p1", local_free=1) == []
    assert await admission.claim("p2", local_free=1) == ["older"]


async def test_a_deferred_request_goes_back_to_the_head(make_admission):
    """The engine was busy: the running request waits again at position 1,
    its slot free, and starts again when its process claims."""
    admission = make_admission()
    limits = await setup(admission, max_concurrency=1)
    assert await admission.enqueue("t0", "p1", "u0", limits, local_free=1) == Admitted()
    await admission.enqueue("t1", "p2", "u1", limits, local_free=0)
    assert await admission.defer("t0") is True
    assert await admission.positions("p1") == {"t0": (1, 2)}
    assert await admission.positions("p2") == {"t1": (2, 2)}
    assert await admission.defer("t0") is False
    assert await admission.claim("p1", local_free=1) == ["t0"]


async def test_a_dead_process_loses_its_slot_after_the_lease(make_admission):
    """p1 holds the only slot and stops renewing (killed); p2 renews its
    waiting ticket, which starts once p1's lease has run out, not before."""
    admission = make_admission(lease_s=SHORT_LEASE_S)
    limits = await setup(admission, max_concurrency=1)
    began = time.monotonic()
    assert await admission.enqueue("dead", "p1", "u0", limits, local_free=1) == Admitted()
    assert await admission.enqueue("alive", "p2", "u1", limits, local_free=1) == Waiting(1, 1)
    started = []
    while not started:
        # Generous: the point is that the slot comes back, not how fast a busy machine polls.
        assert time.monotonic() - began < SHORT_LEASE_S + 10, "the dead process kept its slot"
        await asyncio.sleep(0.05)
        assert await admission.renew("p2", ["alive"]) == []
        started = await admission.claim("p2", local_free=1)
    assert started == ["alive"]
    # Redis counts whole milliseconds: allow one.
    assert time.monotonic() - began >= SHORT_LEASE_S - 0.001, "the slot came back before the lease ran out"
    assert set((await admission.snapshot()).running) == {"alive"}


async def test_renew_keeps_tickets_and_reports_reaped_ones(make_admission):
    """Renewed tickets outlive their lease; a ticket whose process paused
    past the lease is reported by its next renew (the fence), and its user
    may ask again."""
    admission = make_admission(lease_s=SHORT_LEASE_S)
    limits = await setup(admission, max_concurrency=2)
    await admission.enqueue("kept", "p1", "u0", limits, local_free=2)
    await admission.enqueue("paused", "p2", "u1", limits, local_free=2)
    for _ in range(8):
        await asyncio.sleep(SHORT_LEASE_S / 4)
        assert await admission.renew("p1", ["kept"]) == []
    assert await admission.renew("p2", ["paused"]) == ["paused"]
    assert set((await admission.snapshot()).running) == {"kept"}
    assert await admission.enqueue("again", "p2", "u1", limits, local_free=2) == Admitted()


async def test_a_ticket_is_taken_once(make_admission):
    admission = make_admission()
    limits = await setup(admission)
    await admission.enqueue("t0", "p1", "u0", limits, local_free=1)
    with pytest.raises(ValueError, match="already known"):
        await admission.enqueue("t0", "p2", "u1", limits, local_free=1)


async def test_every_operation_works_once_redis_is_back(tmp_path):
    """Redis restarts: one operation fails while it is down, and once it is
    back, the next ones all succeed at once, however many run together (no
    connection left from before the restart fails them, which would send a
    process back to its own queue right after it rejoined the site's)."""
    with redis_server(tmp_path) as server:
        # Built as the registry builds it.
        url = f"redis://127.0.0.1:{server.port}/0"
        admission = RedisAdmission.from_url(url, timeout_s=1, prefix=f"test-{uuid.uuid4().hex}")
        try:
            # Three at once: three connections in the pool.
            assert await asyncio.gather(*(admission.renew("p1", []) for _ in range(3))) == [[]] * 3
            server.stop()
            with pytest.raises(redis.asyncio.RedisError):
                await admission.renew("p1", [])
            server.start()
            assert await asyncio.gather(*(admission.renew("p1", []) for _ in range(3))) == [[]] * 3
        finally:
            await admission.client.aclose()


async def test_the_first_calls_after_a_restart_between_calls_succeed(tmp_path):
    """Redis restarts while no call is in flight, so nothing told the pooled
    connections they are dead: the next calls, three at once (one on each
    of them), still succeed; a process would not leave the site queue."""
    with redis_server(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        admission = RedisAdmission.from_url(url, timeout_s=1, prefix=f"test-{uuid.uuid4().hex}")
        limits = Limits(max_concurrency=1)
        try:
            await admission.set_limits(limits)
            assert await asyncio.gather(*(admission.renew("p1", []) for _ in range(3))) == [[]] * 3
            server.stop()
            server.start()  # forgot everything, scripts and limits included
            results = await asyncio.gather(
                *(admission.enqueue(f"t{i}", "p1", f"u{i}", limits, local_free=4) for i in range(3))
            )
            assert sorted(results, key=lambda r: getattr(r, "position", 0)) == [
                Admitted(),
                Waiting(position=1, waiting=1),
                Waiting(position=2, waiting=2),
            ]
        finally:
            await admission.client.aclose()
