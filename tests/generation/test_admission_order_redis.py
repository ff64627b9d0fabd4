"""The site queue in Redis starts tickets in the priority order too (issue #15).

RedisAdmission's scripts mirror generation.runtime.admission.order; these
run the same steps on it (a redis-server of this module's own) and on
LocalAdmission, the reference model, and compare who starts and the
positions shown. Ageing needs a clock the test can advance, which Redis's
`TIME` is not: it is checked on LocalAdmission (test_admission_order) and
kept out of reach here (a long interval); the service decays with a long
no decay here for the same reason.
"""

import asyncio
import uuid

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.runtime.admission import Admitted, LocalAdmission, RedisAdmission, Waiting
from generation.runtime.admission.order import FairShare, PriorityClass, PriorityPolicy
from generation.runtime.types import Limits, RequestSource
from tests.live import redis_server

API = RequestSource.API
NO_AGEING_S = 1e6
NO_DECAY_S = 0  # no decay: the two clocks would round ties apart


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.port


@pytest.fixture
async def pair(redis_port):
    """(RedisAdmission on a fresh prefix, LocalAdmission)."""
    client = redis.asyncio.Redis(port=redis_port)
    remote = RedisAdmission(client, prefix=f"order-{uuid.uuid4().hex}", lease_s=600, half_life_s=NO_DECAY_S)
    local = LocalAdmission(lease_s=600)
    local.fair = FairShare(NO_DECAY_S)
    yield remote, local
    await client.aclose()


def policy(*classes) -> PriorityPolicy:
    return PriorityPolicy(classes=classes, ageing_s=NO_AGEING_S)


class Both:
    """Run each operation on both admissions; they must answer the same."""

    def __init__(self, remote, local):
        self.remote, self.local = remote, local

    def __getattr__(self, name):
        async def call(*args, **kwargs):
            got = await getattr(self.remote, name)(*args, **kwargs)
            expected = await getattr(self.local, name)(*args, **kwargs)
            assert got == expected, (name, args, got, expected)
            return got

        return call


async def test_classes_order_the_site_queue_and_positions_follow(pair):
    """Cap 1 on the site queue: a staff request that arrives last goes
    first, API traffic (a worse class than the default) last; the site's
    positions and the tickets claimed say so, on Redis as on the model."""
    both = Both(*pair)
    limits = Limits(max_concurrency=1, max_queue_size=20)
    await both.set_limits(limits)
    await both.set_policy(
        policy(PriorityClass("staff", 1, frozenset({"s"})), PriorityClass("api", 500, api=True))
    )
    assert await both.enqueue("run", "p1", "x", limits, local_free=1) == Admitted()
    assert await both.enqueue("api", "p1", "a", limits, local_free=1, source=API) == Waiting(1, 1)
    assert await both.enqueue("chat", "p2", "c", limits, local_free=1) == Waiting(1, 2)
    assert await both.enqueue("staff", "p2", "s", limits, local_free=1) == Waiting(1, 3)
    assert await both.positions("p1") == {"api": (3, 3)}
    assert await both.positions("p2") == {"staff": (1, 3), "chat": (2, 3)}
    await both.release("run")
    assert await both.claim("p1", 1) == []  # p2's staff ticket is next; its slot is kept for it
    assert await both.claim("p2", 1) == ["staff"]


async def test_a_light_user_goes_before_a_heavy_users_backlog_site_wide(pair):
    """One class; cap 1: a person with four API requests and another with
    one: the second person's starts next; after the heavy user's long
    reply, the light user's next request also beats their backlog."""
    both = Both(*pair)
    limits = Limits(max_concurrency=1, max_queue_size=20, max_active_api_per_user=4)
    await both.set_limits(limits)
    await both.set_policy(policy(PriorityClass("team", 1, frozenset({"heavy", "light"}))))
    for i in range(4):
        await both.enqueue(f"h{i}", "p", "heavy", limits, local_free=1, source=API)
    assert await both.enqueue("l0", "p", "light", limits, local_free=1) == Waiting(1, 4)
    await both.account("h0", 300)
    await both.release("h0")
    assert await both.claim("p", 1) == ["l0"]
    await both.account("l0", 5)
    await both.release("l0")
    assert await both.claim("p", 1) == ["h1"]
    await both.enqueue("l1", "p", "light", limits, local_free=1)
    assert await both.positions("p") == {"l1": (1, 3), "h2": (2, 3), "h3": (3, 3)}


async def test_less_service_goes_first_even_with_more_requests_ahead(pair):
    """Cap 2, one class: x has three requests, y two; y's running reply has
    made 500 tokens, x's none: x's third goes before y's second, though x
    has more requests ahead of it (service first, then turns)."""
    both = Both(*pair)
    limits = Limits(max_concurrency=2, max_queue_size=20, max_active_per_user=3)
    await both.set_limits(limits)
    await both.set_policy(policy(PriorityClass("team", 1, frozenset({"x", "y"}))))
    for ticket in ("x1", "y1", "x2", "x3", "y2"):
        await both.enqueue(ticket, "p", ticket[0], limits, local_free=2)
    await both.account("y1", 500)
    assert await both.positions("p") == {"x2": (1, 3), "x3": (2, 3), "y2": (3, 3)}


async def test_an_idle_person_joins_at_the_least_service_of_their_class_site_wide(pair):
    """Cap 1: ann's reply made 300 tokens and she waits again behind a
    staff reply that has made none; bob, idle until now, arrives in ann's
    class and joins at her 300 (not at the staff member's 0), so he waits
    behind her; on Redis as on the model."""
    both = Both(*pair)
    limits = Limits(max_concurrency=1, max_queue_size=20)
    await both.set_limits(limits)
    await both.set_policy(policy(PriorityClass("staff", 1, frozenset({"s"}))))
    assert await both.enqueue("a0", "p", "ann", limits, local_free=1) == Admitted()
    await both.enqueue("s0", "p", "s", limits, local_free=1)
    await both.account("a0", 300)
    await both.release("a0")
    assert await both.claim("p", 1) == ["s0"]
    await both.enqueue("a1", "p", "ann", limits, local_free=1)
    await both.enqueue("b1", "p", "bob", limits, local_free=1)
    assert await both.positions("p") == {"a1": (1, 2), "b1": (2, 2)}


async def test_ageing_lifts_the_class_and_a_start_spends_it_on_redis(redis_port):
    """Redis alone, ageing every 0.5 s (Redis's own clock): two default
    requests wait past the interval behind a staff reply; the older starts
    next (its class has risen), then a fresh staff request goes before the
    other default one, whose class has had a start since."""
    client = redis.asyncio.Redis(port=redis_port)
    remote = RedisAdmission(client, prefix=f"order-{uuid.uuid4().hex}", lease_s=600, half_life_s=0)
    limits = Limits(max_concurrency=1, max_queue_size=20)
    try:
        await remote.set_limits(limits)
        await remote.set_policy(
            PriorityPolicy(classes=(PriorityClass("staff", 1, frozenset({"s1", "s2"})),), ageing_s=0.5)
        )
        await remote.enqueue("staff-run", "p", "s1", limits, local_free=1)
        await remote.enqueue("d1", "p", "x", limits, local_free=1)
        await remote.enqueue("d2", "p", "y", limits, local_free=1)
        await asyncio.sleep(0.6)
        await remote.release("staff-run")
        assert await remote.claim("p", 1) == ["d1"]
        await remote.enqueue("staff-2", "p", "s2", limits, local_free=1)
        assert await remote.positions("p") == {"staff-2": (1, 2), "d2": (2, 2)}
    finally:
        await client.aclose()


PEOPLE = ["a", "b", "c", "d"]
ops = st.one_of(
    st.tuples(st.just("arrive"), st.sampled_from(PEOPLE), st.sampled_from(list(RequestSource))),
    st.tuples(st.just("finish"), st.integers(0, 9), st.integers(0, 300)),
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("defer"), st.integers(0, 9)),
    st.tuples(st.just("cap"), st.integers(0, 3)),
    st.tuples(st.just("classes"), st.permutations(PEOPLE), st.integers(0, 4)),
)


def split_policy(people, split) -> PriorityPolicy:
    return policy(PriorityClass("first", 1, frozenset(people[:split])), PriorityClass("api", 7, api=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(ops, max_size=30))
async def test_property_redis_starts_in_the_models_order(redis_port, steps):
    """Random arrivals, finished replies with tokens, cancels, deferrals,
    cap and class changes on two processes: Redis and the model agree on
    every answer (who starts, positions, refusals) at every step."""
    client = redis.asyncio.Redis(port=redis_port)
    remote = RedisAdmission(client, prefix=f"order-{uuid.uuid4().hex}", lease_s=600, half_life_s=NO_DECAY_S)
    local = LocalAdmission(lease_s=600)
    local.fair = FairShare(NO_DECAY_S)
    both = Both(remote, local)
    limits = Limits(max_concurrency=1, max_queue_size=8, max_active_per_user=3, max_active_api_per_user=3)
    await both.set_limits(limits)
    await both.set_policy(split_policy(PEOPLE, 2))
    running, waiting, serial = [], [], 0
    try:
        for step in steps:
            match step:
                case ("arrive", person, source):
                    serial += 1
                    ticket = f"t{serial}"
                    result = await both.enqueue(
                        ticket, f"p{serial % 2}", person, limits, local_free=2, source=source
                    )
                    if result == Admitted():
                        running.append(ticket)
                    elif isinstance(result, Waiting):
                        waiting.append(ticket)
                case ("finish", index, tokens) if running:
                    ticket = running.pop(index % len(running))
                    await both.account(ticket, tokens)
                    assert await both.release(ticket)
                case ("cancel", index) if waiting:
                    assert await both.release(waiting.pop(index % len(waiting)))
                case ("defer", index) if running:
                    ticket = running.pop(index % len(running))
                    assert await both.defer(ticket)
                    waiting.append(ticket)
                case ("cap", cap):
                    limits = limits.replace(max_concurrency=cap)
                    await both.set_limits(limits)
                case ("classes", people, split):
                    await both.set_policy(split_policy(list(people), split))
            for process in ("p0", "p1"):
                started = await both.claim(process, 2)
                running += started
                waiting = [t for t in waiting if t not in started]
                await both.positions(process)
    finally:
        await client.aclose()
