"""The site queue's spare slots (issue #11): a start with no round trip.

While nobody waits, a process holds a spare site slot for its next request,
which then starts inside `submit`, as with per-process admission, and is
bound to the slot afterwards. Checked here with services on one loop and a
real Redis, as in test_sitequeue: the start at once, `busy` decided by the
site after such a start (with nothing shown before it), and a spare given
back as soon as a request waits elsewhere.
"""

import asyncio

import redis.asyncio as redis

from generation.runtime.types import ErrorCode, Queued, RequestState, Started
from tests.generation.test_service import LONG, LONG_TOKENS, collect
from tests.generation.test_sitequeue import next_of, on_site, prefix, until

__all__ = ["prefix"]  # the fixture, shared
URL = "redis://127.0.0.1:6379/0"


async def holding_a_spare(service):
    """Run one short reply to its end on `service`: its release tops up the
    spares. Returns once the site has released it and `service` holds a spare."""
    assert (await collect(service.submit(user_id=99, messages=LONG, max_new_tokens=2)))[-1]["type"] == "done"
    async with asyncio.timeout(30):
        while not service.site.spares or (await service.site.admission.snapshot()).running:
            await asyncio.sleep(0.01)


async def test_a_request_starts_inside_submit_on_a_spare(make_service, prefix):
    service = await on_site(make_service, URL, prefix, "a", max_concurrency=4, max_new_tokens=LONG_TOKENS)
    await holding_a_spare(service)
    handle = service.submit(user_id=1, messages=LONG)
    assert handle.request.state is RequestState.RUNNING  # no round trip before the start
    assert isinstance(await next_of(handle, Started), Started)
    snapshot = await service.site.admission.snapshot()
    assert handle.request.id in snapshot.running  # bound to the site slot
    assert len(snapshot.running) + len(snapshot.spares) <= 4
    handle.cancel()
    assert (await collect(handle))[-1]["finish_reason"] == "cancelled"
    await until(lambda: handle.request.id not in service.site.tickets)


async def test_the_site_refuses_busy_after_a_start_on_a_spare(make_service, prefix):
    """A person with a reply running on process b asks again on process a,
    which holds a spare: a starts it at once, the site refuses it, and all
    the reader ever sees is `busy`; the person's count stays one."""
    limits = dict(max_concurrency=4, max_new_tokens=LONG_TOKENS)
    first, second = [await on_site(make_service, URL, prefix, name, **limits) for name in ("a", "b")]
    await holding_a_spare(first)
    running = second.submit(user_id=7, messages=LONG)
    assert isinstance(await next_of(running, Started), Started)
    refused = first.submit(user_id=7, messages=LONG)
    assert refused.request.state is RequestState.RUNNING  # started on the spare
    assert await collect(refused) == [{"type": "error", "code": "busy", "message": ErrorCode.BUSY.text}]
    assert refused.request.started_at is None  # it never started, as far as anyone saw
    assert (await first.site.admission.snapshot()).users == {"7": 1}
    running.cancel()


async def test_a_spare_is_given_back_when_a_request_waits_elsewhere(make_service, prefix):
    """Cap 3: process a holds a spare while b runs two replies; b's third
    waits (shown at position 1) only until a gives its spare back, with
    nothing ending meanwhile: the cost of a spare, a round trip or two."""
    limits = dict(max_concurrency=3, max_new_tokens=LONG_TOKENS)
    first, second = [await on_site(make_service, URL, prefix, name, **limits) for name in ("a", "b")]
    await holding_a_spare(first)
    handles = [second.submit(user_id=10 + i, messages=LONG) for i in range(2)]
    for handle in handles:
        assert isinstance(await next_of(handle, Started), Started)
    snapshot = await first.site.admission.snapshot()
    assert "a" in snapshot.spares.values() and len(snapshot.running) + len(snapshot.spares) == 3
    third = second.submit(user_id=12, messages=LONG)
    assert await next_of(third, Queued) == Queued(position=1, waiting=1)
    assert isinstance(await next_of(third, Started), Started)  # a gave its spare back
    assert all(h.request.state is RequestState.RUNNING for h in handles)
    assert not first.site.spares
    for handle in [*handles, third]:
        handle.cancel()


async def test_a_reply_started_on_a_spare_survives_redis_failing_its_bind(make_service, prefix):
    """Redis fails (an injected connection error) just when a reply started
    on a spare is bound: the process falls back to its own cap, and the
    reply runs to its end as any other that started before an outage."""
    service = await on_site(make_service, URL, prefix, "a", max_concurrency=4, max_new_tokens=LONG_TOKENS)
    await holding_a_spare(service)
    admission = service.site.admission

    async def unreachable(*args, **kwargs):
        raise redis.ConnectionError("injected: Redis went away")

    admission.bind = unreachable  # the fault; everything else is the real Redis
    handle = service.submit(user_id=1, messages=LONG, max_new_tokens=4)
    assert handle.request.state is RequestState.RUNNING  # on the spare
    events = await collect(handle)
    assert events[0]["type"] == "started"
    assert events[-1]["type"] == "done"
    assert service.status()["admission"]["scope"] == "process"
    del admission.bind
    await until(lambda: service.status()["admission"]["scope"] == "site", timeout=10)


async def test_a_renewal_just_before_the_bind_leaves_the_reply_alone(make_service, prefix):
    """The heartbeat's renewal is already queued when a reply starts on a
    spare (so it runs before the bind): the reply is not taken for one whose
    lease ran out; it runs to its end."""
    service = await on_site(make_service, URL, prefix, "a", max_concurrency=4, max_new_tokens=LONG_TOKENS)
    await holding_a_spare(service)
    service.site._ops.put_nowait(service.site._renew)  # as the heartbeat does, every third of a lease
    handle = service.submit(user_id=1, messages=LONG, max_new_tokens=4)
    assert handle.request.state is RequestState.RUNNING  # on the spare
    assert (await collect(handle))[-1]["type"] == "done"
