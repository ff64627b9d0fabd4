"""The site queue's edges that a real model cannot be made to hit on cue:
an op whose reply is lost, a release queued behind a failing op, a request
deferred by a busy engine after the rejoin. A fake engine (the one of
test_service_reports) sends the reports; the site queue is a real Redis at
127.0.0.1:6379 under a prefix of each test's own.
"""

import asyncio
import uuid

import pytest
import redis.asyncio as redis

from generation.runtime.admission import RedisAdmission
from generation.runtime.service import GenerationService
from generation.runtime.sitequeue import SiteQueue
from generation.runtime.types import (
    BackendReady,
    Error,
    ErrorCode,
    FinishReason,
    Limits,
    RequestDeferred,
    RequestFinished,
    RequestState,
)
from tests.generation.test_service_reports import ENGINE, FakeEngine

URL = "redis://127.0.0.1:6379/0"
LEASE_S = 1.5


@pytest.fixture
async def site():
    """Build services on fake engines sharing one site queue; stopped at teardown."""
    prefix, services = f"test:{uuid.uuid4().hex}", []

    async def factory(name, *, poll_s=0.2, **limits):
        engine = FakeEngine()
        service = GenerationService(backend=engine, limits=Limits(**limits), worker_name=name)
        service.start()
        client = redis.Redis.from_url(URL, socket_timeout=1, socket_connect_timeout=1)
        admission = RedisAdmission(client, prefix=prefix, lease_s=LEASE_S)
        service.site = SiteQueue(service, admission, process=name, poll_s=poll_s, probe_s=0.3)
        service.site.start()
        services.append(service)
        engine.deliver([BackendReady(ENGINE)])
        await asyncio.sleep(0.05)
        return service, engine

    yield factory
    for service in services:
        service.stop()


async def until(predicate, timeout=5):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def fail_renew_once(admission) -> None:
    """Make `admission`'s next renew (the heartbeat's) fail as if Redis went
    away, and the ones after it work: one outage, short enough that Redis
    kept everything."""
    real_renew, failed = admission.renew, []

    async def renew_once_down(process, tickets):
        if not failed:
            failed.append(1)
            raise redis.ConnectionError("Redis went away")
        return await real_renew(process, tickets)

    admission.renew = renew_once_down


async def test_a_request_deferred_after_the_rejoin_starts_again(site):
    """A reply that started during an outage has no site ticket; if the
    engine defers it after the rejoin, it must still start again."""
    service, engine = await site("a", max_concurrency=2)
    admission = service.site.admission
    fail_renew_once(admission)
    await until(lambda: not service.site.active)
    handle = service.submit(user_id=1, messages=[])  # runs locally, no ticket
    await until(lambda: handle.id in service.running)
    await until(lambda: service.site.active)  # rejoined (Redis was up all along)
    engine.deliver([RequestDeferred(handle.id, retry_after_s=0.1)])
    await until(lambda: handle.request in service.queue)
    await until(lambda: engine.admitted.count(handle.id) == 2)  # fails: waits until the queue timeout


async def test_a_ticket_redis_already_has_does_not_stop_the_rejoin(site):
    """An enqueue that ran in Redis but whose reply timed out leaves a ticket
    the process does not know; the rejoin must still put every waiting
    request in the site queue, and they start when the slot frees."""
    service, engine = await site("a", max_concurrency=1)
    admission = service.site.admission
    real_enqueue, lost = admission.enqueue, []

    async def enqueue_reply_lost(ticket, *args, **kwargs):
        result = await real_enqueue(ticket, *args, **kwargs)
        if not lost and not kwargs.get("rejoin"):
            lost.append(ticket)
            raise redis.TimeoutError("Timeout reading from 127.0.0.1:6379")
        return result

    first = service.submit(user_id=1, messages=[])
    await until(lambda: first.id in service.running)
    admission.enqueue = enqueue_reply_lost
    second = service.submit(user_id=2, messages=[])  # ran in Redis, reply lost: fallback
    await until(lambda: not service.site.active)
    third = service.submit(user_id=3, messages=[])  # waits locally (cap 1)
    await until(lambda: service.site.active)  # rejoined
    engine.deliver([RequestFinished(first.id, FinishReason.STOP)])
    await until(lambda: second.id in service.running)  # fails: stuck until the queue timeout
    engine.deliver([RequestFinished(second.id, FinishReason.STOP)])
    await until(lambda: third.id in service.running)


async def test_a_release_queued_behind_a_failing_op_is_not_lost(site):
    """A reply ends while an op is in flight; that op fails and the process
    falls back. Once back, the ended reply's ticket must not hold a site slot."""
    service, engine = await site("a", max_concurrency=2)
    admission = service.site.admission
    real_renew, gate, failed = admission.renew, asyncio.Event(), []

    async def renew_fails_after_gate(process, tickets):
        if not failed and tickets:
            failed.append(1)
            await gate.wait()
            raise redis.ConnectionError("Redis went away")
        return await real_renew(process, tickets)

    handle = service.submit(user_id=1, messages=[])
    await until(lambda: handle.id in service.running)
    admission.renew = renew_fails_after_gate
    await until(lambda: failed)  # the heartbeat's renew is in flight
    engine.deliver([RequestFinished(handle.id, FinishReason.STOP)])  # its release queues behind
    await asyncio.sleep(0.05)
    gate.set()
    await until(lambda: not service.site.active)
    await until(lambda: service.site.active)
    snapshot = await admission.snapshot()
    assert handle.id not in snapshot.running  # fails: held until its lease runs out


async def test_a_request_sent_while_rejoining_is_checked_like_any_other(site):
    """Only requests taken during the outage skip the busy check on the
    rejoin; one sent while the rejoin is under way is refused `busy` when
    its user already has a reply running on another process."""
    a, _ = await site("a", max_concurrency=4)
    b, _ = await site("b", max_concurrency=4)
    running = b.submit(user_id=7, messages=[])
    await until(lambda: running.id in b.running)
    admission = a.site.admission
    fail_renew_once(admission)
    real_set_limits, sent = admission.set_limits, []

    async def set_limits_and_a_new_request(limits):
        await real_set_limits(limits)
        if not sent:
            sent.append(a.submit(user_id=7, messages=[]))  # the rejoin is under way

    admission.set_limits = set_limits_and_a_new_request
    await until(lambda: sent)
    request = sent[0].request
    await until(lambda: request.state is not RequestState.QUEUED)
    assert request.id not in a.running  # two replies of one user at once
    assert request.events.get_nowait() == Error(code=ErrorCode.BUSY, message=ErrorCode.BUSY.text)


async def test_a_restarted_process_does_not_wait_for_its_predecessor_tickets(site):
    """A process restarted under the same worker name (chatsite-%H-%i) finds
    its predecessor's waiting ticket at the head of the site queue. Its claim
    grants that ticket to it, since the names match; the new process knows no
    such request, and must free the slot rather than leave it held until the
    dead ticket's lease runs out (30 s here) while its own request waits."""
    service, _ = await site("a", max_concurrency=1, poll_s=0.2)
    site_queue = service.site
    predecessor = RedisAdmission(site_queue.admission.client, prefix=site_queue.admission.prefix, lease_s=30)
    await predecessor.enqueue("ghost", "a", "99", service.limits, local_free=0)
    handle = service.submit(user_id=1, messages=[])
    await until(lambda: handle.id in service.running, timeout=5)


async def test_a_reply_running_through_a_short_outage_keeps_its_site_slot(site):
    """One failed Redis call sends a process to its own queue; a reply that
    ran on through it still holds its site slot after the rejoin (the probe
    renewed it), so the site's cap of 1 still makes another process wait."""
    first, engine = await site("a", max_concurrency=1)
    second, _ = await site("b", max_concurrency=1)
    running = first.submit(user_id=1, messages=[])
    await until(lambda: running.id in first.running)
    admission = first.site.admission
    fail_renew_once(admission)
    await until(lambda: not first.site.active)
    await until(lambda: first.site.active)
    await asyncio.sleep(LEASE_S * 1.5)  # past the lease it held when the outage began
    assert running.id in (await admission.snapshot()).running
    waiting = second.submit(user_id=2, messages=[])
    await until(lambda: waiting.request.position == (1, 1))
    assert waiting.id not in second.running
    engine.deliver([RequestFinished(running.id, FinishReason.STOP)])
    await until(lambda: waiting.id in second.running)


async def test_an_enqueue_sent_twice_does_not_strand_its_request(site):
    """An enqueue that Redis ran but whose reply a broken connection lost is
    sent again by the client's retry, and the site answers that it already
    knows the ticket. The request must still start (the process resyncs as
    after an outage), not wait unseen until its queue timeout."""
    service, _ = await site("a", max_concurrency=1)
    admission = service.site.admission
    real_enqueue = admission.enqueue

    async def enqueue_twice(*args, **kwargs):
        await real_enqueue(*args, **kwargs)  # ran; its reply lost
        return await real_enqueue(*args, **kwargs)

    admission.enqueue = enqueue_twice
    handle = service.submit(user_id=1, messages=[])
    await until(lambda: handle.id in service.running)
    admission.enqueue = real_enqueue
    await until(lambda: service.site.active)
    assert service.status()["admission"]["scope"] == "site"
