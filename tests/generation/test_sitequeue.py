"""GenerationServices sharing one site queue (SiteQueue on a real Redis).

Several services on one event loop stand for several daphne processes: each
has its own tiny-model backend and its own process name, and all admit
through one RedisAdmission under a key prefix of this test's own. What a
person would notice is checked: the site-wide cap, the site-wide positions
in `queued` events, `busy` for a second request of one user on another
process, and chat going on through a Redis outage and back.
"""

import asyncio
import uuid

import pytest

from generation.runtime.admission import RedisAdmission
from generation.runtime.admission.order import PriorityClass, PriorityPolicy
from generation.runtime.sitequeue import SiteQueue
from generation.runtime.types import Done, ErrorCode, Queued, RequestSource, RequestState, Started
from tests.generation.test_service import LONG, LONG_TOKENS, collect, ready
from tests.live import redis_server

LEASE_S = 1.5


async def on_site(make_service, url: str, prefix: str, name: str, lease_s: float = LEASE_S, **limits):
    """A started service admitting through the site queue at `url`/`prefix`
    (its Redis client built as the registry builds it)."""
    service = await make_service(**limits)
    service.worker_name = name
    admission = RedisAdmission.from_url(url, timeout_s=1, prefix=prefix, lease_s=lease_s)
    service.site = SiteQueue(service, admission, process=name, poll_s=0.2, probe_s=0.3)
    service.site.start()
    return await ready(service)


async def until(predicate, timeout=30):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def next_of(handle, kind, timeout=30):
    async with asyncio.timeout(timeout):
        while True:
            event = await handle.request.events.get()
            if isinstance(event, kind) or event.terminal:
                return event


@pytest.fixture
def prefix():
    return f"test:{uuid.uuid4().hex}"


async def test_the_cap_and_the_positions_are_the_sites(make_service, prefix):
    """Three processes with cap 2: two replies run in all, the others wait
    with site-wide positions 1..4 in arrival order, and a cancel frees a
    slot for the head of the site queue, wherever it waits."""
    url = "redis://127.0.0.1:6379/0"
    limits = dict(max_concurrency=2, max_new_tokens=LONG_TOKENS, max_queue_size=10)
    services = [await on_site(make_service, url, prefix, f"p{i}", **limits) for i in range(3)]
    handles = []
    for index in range(6):
        handles.append(services[index % 3].submit(user_id=index, messages=LONG))
        await asyncio.sleep(0.05)  # arrival order is submit order
    await until(lambda: sum(len(s.running) for s in services) == 2)
    for handle in handles[:2]:
        assert isinstance(await next_of(handle, Started), Started)
    positions = [await next_of(handle, Queued) for handle in handles[2:]]
    await until(lambda: all(h.request.position and h.request.position[1] == 4 for h in handles[2:]))
    assert [h.request.position for h in handles[2:]] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(isinstance(event, Queued) for event in positions)
    await asyncio.sleep(0.5)
    assert sum(len(s.running) for s in services) == 2  # still, after polls and wake-ups

    handles[0].cancel()
    assert isinstance(await next_of(handles[2], Started), Started)  # the head, on another process
    await until(lambda: handles[3].request.position == (1, 3))
    assert sum(len(s.running) for s in services) == 2
    for handle in handles:
        handle.cancel()


async def test_one_user_on_two_processes_is_busy_on_the_second(make_service, prefix):
    url = "redis://127.0.0.1:6379/0"
    first, second = [
        await on_site(make_service, url, prefix, name, max_concurrency=4, max_new_tokens=LONG_TOKENS)
        for name in ("a", "b")
    ]
    running = first.submit(user_id=7, messages=LONG)
    assert isinstance(await next_of(running, Started), Started)
    refused = await collect(second.submit(user_id=7, messages=LONG))
    assert refused == [{"type": "error", "code": "busy", "message": ErrorCode.BUSY.text}]
    running.cancel()
    assert (await collect(running))[-1]["finish_reason"] == "cancelled"
    # The slot and the user's count came back: the same user may ask again.
    again = second.submit(user_id=7, messages=LONG)
    assert isinstance(await next_of(again, Started), Started)
    again.cancel()


async def test_a_persons_api_requests_have_their_own_limit_site_wide(make_service, prefix):
    """With a chat reply running on one process, the same person's API
    requests still start, on either process, up to the API's own limit;
    one more is busy, and so is a second chat reply."""
    url = "redis://127.0.0.1:6379/0"
    limits = dict(max_concurrency=4, max_new_tokens=LONG_TOKENS, max_active_api_per_user=2)
    first, second = [await on_site(make_service, url, prefix, name, **limits) for name in ("a", "b")]
    api = dict(messages=LONG, source=RequestSource.API, api_key_id=3)
    running = [first.submit(user_id=7, messages=LONG), second.submit(user_id=7, **api)]
    running.append(first.submit(user_id=7, **api))
    for handle in running:
        assert isinstance(await next_of(handle, Started), Started)
    busy = [{"type": "error", "code": "busy", "message": ErrorCode.BUSY.text}]
    assert await collect(second.submit(user_id=7, **api)) == busy
    assert await collect(second.submit(user_id=7, messages=LONG)) == busy
    for handle in running:
        handle.cancel()


async def test_chat_goes_on_through_a_redis_outage(make_service, tmp_path, prefix):
    """Redis stops: each process falls back to its own cap and says so;
    replies still complete. Redis back: they rejoin the site queue by
    themselves, and the cap is the site's again."""
    with redis_server(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        limits = dict(max_concurrency=1, max_new_tokens=LONG_TOKENS)
        services = [await on_site(make_service, url, prefix, name, **limits) for name in ("a", "b")]
        short = dict(messages=LONG, max_new_tokens=5)
        assert (await collect(services[0].submit(user_id=1, **short)))[-1]["type"] == "done"

        server.stop()
        outage = [services[i % 2].submit(user_id=10 + i, **short) for i in range(4)]
        ends = [(await collect(handle))[-1] for handle in outage]
        assert [end["type"] for end in ends] == ["done"] * 4
        assert all(s.status()["admission"]["scope"] == "process" for s in services)
        assert "cannot be reached" in services[0].status()["admission"]["error"]

        server.start()
        await until(lambda: all(s.status()["admission"]["scope"] == "site" for s in services))
        first = services[0].submit(user_id=20, messages=LONG)
        assert isinstance(await next_of(first, Started), Started)
        second = services[1].submit(user_id=21, messages=LONG)
        assert await next_of(second, Queued) == Queued(position=1, waiting=1)  # the site's cap of 1
        first.cancel()
        assert isinstance(await next_of(second, Started), Started)
        second.cancel()


async def test_a_redis_restart_between_calls_keeps_the_sites_cap(make_service, tmp_path, prefix):
    """Redis restarts while no call is in flight: each process's pooled
    connection from before is dead, yet the next requests go through the
    site queue at once (none falls back to its own cap): with a site cap of
    1 on two processes, one reply runs and the other waits at position 1."""
    with redis_server(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        # A long lease: no heartbeat falls in the restart's gap by chance.
        limits = dict(max_concurrency=1, max_new_tokens=LONG_TOKENS)
        services = [
            await on_site(make_service, url, prefix, name, lease_s=60, **limits) for name in ("a", "b")
        ]
        short = dict(messages=LONG, max_new_tokens=5)
        for user, service in enumerate(services):  # each has a pooled connection now
            assert (await collect(service.submit(user_id=user, **short)))[-1]["type"] == "done"

        server.stop()
        server.start()
        first = services[0].submit(user_id=20, messages=LONG)
        assert isinstance(await next_of(first, Started), Started)
        second = services[1].submit(user_id=21, messages=LONG)
        assert await next_of(second, Queued) == Queued(position=1, waiting=1)
        assert [s.status()["admission"]["scope"] for s in services] == ["site", "site"]
        assert sum(len(s.running) for s in services) == 1
        first.cancel()
        assert isinstance(await next_of(second, Started), Started)
        second.cancel()


async def test_debug_log_splits_submit_to_start(make_service, prefix, caplog):
    """With the site queue's logger at DEBUG, a request that starts at once
    logs where its submit-to-start went (hop, enqueue round trip, start), for
    bench_chat --processes; in milliseconds, none negative."""
    caplog.set_level("DEBUG", logger="generation.runtime.sitequeue")
    service = await on_site(make_service, "redis://127.0.0.1:6379/0", prefix, "p0", max_concurrency=2)
    handle = service.submit(user_id=1, messages=LONG)
    assert isinstance(await next_of(handle, Started), Started)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("admitted ")]
    assert line.startswith(f"admitted {handle.request.id}: hop ")
    hop, enqueue, start = (float(part.split()[-2]) for part in line.split(": ", 1)[1].split(", "))
    assert min(hop, enqueue, start) >= 0
    handle.cancel()


async def test_a_running_reply_counts_for_its_person_at_the_site(make_service, prefix):
    """Issue #15, one class, cap 2: user 2 had a short reply; user 1's long
    reply and user 3's run, and users 1 and 2 each wait with one more (user
    1's first). While user 1's reply runs, the renewals count its tokens at
    the site, so when user 3's reply stops, user 2's request starts, not
    user 1's: user 1 has received more, though their reply has not ended."""
    url = "redis://127.0.0.1:6379/0"
    limits = dict(max_concurrency=2, max_new_tokens=LONG_TOKENS, max_queue_size=10, max_active_per_user=2)
    service = await on_site(make_service, url, prefix, "p0", **limits)
    service.update_priority(PriorityPolicy(classes=(PriorityClass("team", 1, frozenset({"1", "2", "3"})),)))
    short = service.submit(user_id=2, messages=LONG, max_new_tokens=4)
    assert (await next_of(short, Done)).type == "done"
    long_one = service.submit(user_id=1, messages=LONG)
    other = service.submit(user_id=3, messages=LONG)
    for handle in (long_one, other):
        assert isinstance(await next_of(handle, Started), Started)
    first = service.submit(user_id=1, messages=LONG)
    await asyncio.sleep(0.05)
    second = service.submit(user_id=2, messages=LONG)
    await until(lambda: long_one.request.completion_tokens > 20)
    await asyncio.sleep(LEASE_S / 3 + 0.3)  # a renewal has counted them
    assert long_one.request.state is RequestState.RUNNING
    other.cancel()
    await until(lambda: RequestState.RUNNING in (first.request.state, second.request.state))
    assert (second.request.state, first.request.state) == (RequestState.RUNNING, RequestState.QUEUED)
    for handle in (long_one, first, second):
        handle.cancel()
