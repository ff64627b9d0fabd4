"""Priority classes, ageing and fair shares in the start order (issue #15).

On LocalAdmission, the reference model of admission, with a clock the test
advances (no sleeps): who starts next, and at which position people wait.
"""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.runtime.admission import Admitted, LocalAdmission, Waiting
from generation.runtime.admission.order import (
    FairShare,
    PriorityClass,
    PriorityPolicy,
    Waiter,
    start_order,
)
from generation.runtime.types import Limits, RequestSource

API = RequestSource.API


class Clock:
    """A clock the test advances."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


def three_classes(ageing_s: float = 60.0) -> PriorityPolicy:
    return PriorityPolicy(
        classes=(
            PriorityClass("staff", 1, frozenset({"s1", "s2"})),
            PriorityClass("support", 5, frozenset({"m1", "m2"})),
            PriorityClass("batch", 9, frozenset({"b1", "b2"})),
        ),
        ageing_s=ageing_s,
    )


async def make(cap=1, policy=None, **limits):
    clock = Clock()
    admission = LocalAdmission(clock=clock, lease_s=1e9)
    limits = Limits(max_concurrency=cap, max_queue_size=50, **limits)
    await admission.set_limits(limits)
    await admission.set_policy(policy)
    return admission, limits, clock


async def finish(admission, ticket, tokens=0):
    await admission.account(ticket, tokens)
    assert await admission.release(ticket)
    return await admission.claim("p", 10)


async def test_cap_one_three_classes_start_in_class_order_fifo_within_a_class():
    """Cap 1, one reply running: arrivals of three classes in mixed order
    start staff first, then support, then batch (the default class of
    people in none sits after the three here), arrival order within each;
    the positions shown say the same order."""
    admission, limits, _ = await make(policy=three_classes())
    assert await admission.enqueue("first", "p", "x", limits, local_free=1) == Admitted()
    arrivals = [("b-1", "b1"), ("m-1", "m1"), ("nobody", "x2"), ("s-1", "s1"), ("b-2", "b2"), ("s-2", "s2")]
    for ticket, user in arrivals:
        assert isinstance(await admission.enqueue(ticket, "p", user, limits, local_free=1), Waiting)
    expected = ["s-1", "s-2", "m-1", "b-1", "b-2", "nobody"]
    positions = await admission.positions("p")
    assert sorted(positions, key=positions.get) == expected
    started, running = [], "first"
    while True:
        claimed = await finish(admission, running)
        if not claimed:
            break
        (running,) = claimed
        started.append(running)
    assert started == expected


async def test_a_better_class_arriving_moves_a_waiting_request_back():
    """A batch request waits at 1; a staff request arrives: the batch one is
    now at 2 (its position grew), the staff one at 1."""
    admission, limits, _ = await make(policy=three_classes())
    await admission.enqueue("run", "p", "x", limits, local_free=1)
    assert await admission.enqueue("b", "p", "b1", limits, local_free=1) == Waiting(1, 1)
    assert await admission.enqueue("s", "p", "s1", limits, local_free=1) == Waiting(1, 2)
    assert await admission.positions("p") == {"s": (1, 2), "b": (2, 2)}


async def test_ageing_promotes_a_request_one_class_per_interval():
    """A batch request that has waited past one interval ranks with the
    support class (and, older, goes before a fresh support request), yet
    still after a fresh staff request; past three intervals it is overdue
    and goes before everyone who arrived after it."""
    admission, limits, clock = await make(policy=three_classes(ageing_s=60))
    await admission.enqueue("run", "p", "x", limits, local_free=1)
    await admission.enqueue("batch", "p", "b1", limits, local_free=1)
    clock.now += 30
    await admission.enqueue("support-early", "p", "m1", limits, local_free=1)
    positions = await admission.positions("p")
    assert positions["support-early"][0] < positions["batch"][0]  # not yet aged
    clock.now += 31  # the batch request has waited 61 s: one class up
    await admission.enqueue("support", "p", "m2", limits, local_free=1)
    await admission.enqueue("staff", "p", "s1", limits, local_free=1)
    positions = await admission.positions("p")
    assert sorted(positions, key=positions.get) == ["staff", "batch", "support-early", "support"]
    clock.now += 120  # 181 s: past the best class, overdue
    await admission.enqueue("staff-2", "p", "s2", limits, local_free=1)
    positions = await admission.positions("p")
    assert sorted(positions, key=positions.get)[:2] == ["batch", "support-early"]


async def test_an_aged_request_does_not_pass_a_classmate_who_received_less():
    """Cap 1, staff and the default class: a heavy user's reply runs while
    their next request waits; a chat user of the same class arrives 30 s
    later. At 61 s the heavy reply ends (600 tokens): the class has waited
    past the ageing interval, and the slot that wait earned goes to the chat
    user, who has received less, not to the heavy user's older request."""
    policy = PriorityPolicy(classes=(PriorityClass("staff", 1, frozenset({"s1"})),))
    admission, limits, clock = await make(policy=policy, max_active_api_per_user=4)
    assert await admission.enqueue("h0", "p", "heavy", limits, local_free=1, source=API) == Admitted()
    await admission.enqueue("h1", "p", "heavy", limits, local_free=1, source=API)
    clock.now += 30
    await admission.enqueue("ann", "p", "ann", limits, local_free=1)
    clock.now += 31
    assert await finish(admission, "h0", tokens=600) == ["ann"]


async def test_a_start_spends_the_lift_of_its_class():
    """Cap 1: two default requests wait 61 s behind a running staff reply,
    so their class has risen to the staff class's level and the older one
    starts next; then a staff request arrives, and when the slot frees again
    it goes to staff: the other default request (not yet overdue) waits,
    as its class has had a start since (one slot per interval of waiting)."""
    policy = PriorityPolicy(classes=(PriorityClass("staff", 1, frozenset({"s1", "s2"})),))
    admission, limits, clock = await make(policy=policy)
    await admission.enqueue("staff-run", "p", "s1", limits, local_free=1)
    await admission.enqueue("d1", "p", "x", limits, local_free=1)
    await admission.enqueue("d2", "p", "y", limits, local_free=1)
    clock.now += 61
    assert await finish(admission, "staff-run") == ["d1"]
    await admission.enqueue("staff-2", "p", "s2", limits, local_free=1)
    clock.now += 1
    assert await admission.positions("p") == {"staff-2": (1, 2), "d2": (2, 2)}
    assert await finish(admission, "d1") == ["staff-2"]


async def test_a_person_joins_at_the_least_service_of_their_own_class():
    """Cap 1: ann's reply made 300 tokens and she waits again; a staff
    reply (no tokens yet) runs. Bob, idle until now, arrives in ann's
    class: he joins at ann's 300, not at the staff member's 0 (another
    class's count), so he banks no credit over ann and waits behind her."""
    policy = PriorityPolicy(classes=(PriorityClass("staff", 1, frozenset({"s1"})),))
    admission, limits, _ = await make(policy=policy)
    assert await admission.enqueue("a0", "p", "ann", limits, local_free=1) == Admitted()
    await admission.enqueue("s0", "p", "s1", limits, local_free=1)
    assert await finish(admission, "a0", tokens=300) == ["s0"]
    await admission.enqueue("a1", "p", "ann", limits, local_free=1)
    await admission.enqueue("b1", "p", "bob", limits, local_free=1)
    assert await admission.positions("p") == {"a1": (1, 2), "b1": (2, 2)}


async def test_a_light_user_starts_within_one_turn_of_a_heavy_api_user():
    """Two people of one class, cap 1: one sends four API requests, then
    the other sends one. The second person's request starts next, not after
    the other's four."""
    policy = PriorityPolicy(classes=(PriorityClass("team", 1, frozenset({"heavy", "light"})),))
    admission, limits, _ = await make(policy=policy, max_active_api_per_user=4)
    for i in range(4):
        await admission.enqueue(f"h{i}", "p", "heavy", limits, local_free=1, source=API)
    result = await admission.enqueue("l0", "p", "light", limits, local_free=1, source=API)
    assert result == Waiting(position=1, waiting=4)
    assert await finish(admission, "h0", tokens=50) == ["l0"]


async def test_fair_share_favours_the_person_with_less_service():
    """Inside a class, two people with two requests each, cap 1: after a's
    long reply, b's two start before a's second (b has received less);
    with no policy the order is plain arrival order."""
    policy = PriorityPolicy(classes=(PriorityClass("team", 1, frozenset({"a", "b"})),))
    for given_policy, expected in ((policy, ["a1", "b1", "b2", "a2"]), (None, ["a1", "a2", "b1", "b2"])):
        admission, limits, _ = await make(policy=given_policy, max_active_per_user=2)
        for ticket in ("a1", "a2", "b1", "b2"):
            await admission.enqueue(ticket, "p", ticket[0], limits, local_free=1)
        started, running = ["a1"], "a1"
        while running:
            claimed = await finish(admission, running, tokens=400 if running[0] == "a" else 10)
            running = claimed[0] if claimed else None
            started += claimed
        assert started == expected


def test_an_idle_person_banks_no_credit():
    """Someone who was idle while another was served joins at the least
    service of those active, not at zero."""
    fair = FairShare(half_life_s=1e9)
    fair.charge("busy", 1000, now=0)
    fair.join("idle", active=["busy"], now=10)
    assert math.isclose(fair.value("idle", 10), fair.value("busy", 10))
    assert fair.value("idle", 10) > 999


def test_service_decays_with_its_half_life():
    fair = FairShare(half_life_s=60)
    fair.charge("a", 100, now=0)
    assert math.isclose(fair.value("a", 60), 50)


def test_without_classes_the_order_is_arrival_order():
    waiters = [Waiter("t1", "a", 0, 0), Waiter("t2", "a", 0, 1), Waiter("t3", "b", 0, 2)]
    assert start_order(waiters, now=5, policy=PriorityPolicy(), service={"a": 1e6}) == ["t1", "t2", "t3"]


def test_policy_survives_its_json_form():
    policy = three_classes(ageing_s=12)
    assert PriorityPolicy.from_dict(policy.as_dict()) == policy
    assert policy.class_of("s1", RequestSource.CHAT) == ("staff", 1)
    assert policy.class_of("nobody", API) == ("default", 100)


# The property ----------------------------------------------------------

AGEING_S = 10.0
PEOPLE = ["a", "b", "c", "d", "e"]
ops = st.one_of(
    st.tuples(st.just("arrive"), st.sampled_from(PEOPLE), st.sampled_from(list(RequestSource))),
    st.tuples(st.just("finish"), st.integers(0, 9), st.integers(0, 300)),
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("cap"), st.integers(0, 3)),
    st.tuples(st.just("classes"), st.permutations(PEOPLE), st.integers(0, 3)),
    st.tuples(st.just("wait"), st.floats(0, 2 * AGEING_S)),
)


def policy_of(people, split) -> PriorityPolicy:
    return PriorityPolicy(
        classes=(
            PriorityClass("first", 1, frozenset(people[:split])),
            PriorityClass("api", 7, frozenset(), api=True),
        ),
        ageing_s=AGEING_S,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(ops, max_size=40), split=st.integers(0, 5))
async def test_property_order_never_starves_exceeds_the_cap_or_loses_a_request(steps, split):
    """Random arrivals, finished replies (with tokens), cancels, cap and
    class changes and waiting time, one process with room for all: at every
    claim, no more run than the cap, the tickets that start are exactly
    those at positions 1..k a moment before, none is started while a class
    at a better effective level (its level less one per interval it has had
    a request waiting and none started) or an overdue request waits, and no
    request that has waited past the ageing bound (levels x interval) is
    overtaken by a later arrival; every ticket is waiting, running or
    ended, once."""
    policy = policy_of(PEOPLE, split)
    admission, limits, clock = await make(
        cap=1, policy=policy, max_active_per_user=3, max_active_api_per_user=3
    )
    state, arrived, served, serial = {}, {}, {}, 0

    def lifted(level, tickets):
        """The effective level of class `level` with `tickets` waiting."""
        waits = [
            clock.now - max(arrived[t][0], served.get(level, -math.inf))
            for t in tickets
            if arrived[t][1] == level
        ]
        return max(level - math.floor(max(waits) / AGEING_S), 0)

    async def claim():
        nonlocal state
        before = await admission.positions("p")
        waited = [t for t, s in state.items() if s == "waiting"]
        started = await admission.claim("p", 10)
        ranked = sorted(before, key=before.get)
        assert started == ranked[: len(started)]
        for ticket in started:
            state[ticket] = "running"
        if started:
            assert sum(1 for s in state.values() if s == "running") <= limits.max_concurrency
        waiting = [t for t, s in state.items() if s == "waiting"]
        if started:
            bound = len(policy.levels) * policy.ageing_s
            for ticket in started:
                for other in waiting:
                    if arrived[other][0] < arrived[ticket][0]:
                        assert clock.now - arrived[other][0] < bound, "a long waiter was overtaken"
                    mine = arrived[ticket][1] - math.floor((clock.now - arrived[ticket][0]) / AGEING_S)
                    theirs = arrived[other][1] - math.floor((clock.now - arrived[other][0]) / AGEING_S)
                    assert mine < 0 or (
                        theirs >= 0
                        and lifted(arrived[other][1], waited) >= lifted(arrived[ticket][1], waited)
                    ), "a better class was passed over"
        for ticket in started:
            served[arrived[ticket][1]] = clock.now

    for step in steps:
        match step:
            case ("arrive", person, source):
                serial += 1
                ticket = f"t{serial}"
                result = await admission.enqueue(ticket, "p", person, limits, local_free=10, source=source)
                if isinstance(result, (Admitted, Waiting)):
                    state[ticket] = "running" if result == Admitted() else "waiting"
                    arrived[ticket] = (clock.now, policy.level(person, source))
                if result == Admitted():
                    served[arrived[ticket][1]] = clock.now
            case ("finish", index, tokens):
                running = [t for t, s in state.items() if s == "running"]
                if running:
                    ticket = running[index % len(running)]
                    await admission.account(ticket, tokens)
                    assert await admission.release(ticket)
                    state[ticket] = "ended"
            case ("cancel", index):
                waiting = [t for t, s in state.items() if s == "waiting"]
                if waiting:
                    ticket = waiting[index % len(waiting)]
                    assert await admission.release(ticket)
                    state[ticket] = "ended"
            case ("cap", cap):
                limits = limits.replace(max_concurrency=cap)
                await admission.set_limits(limits)
            case ("classes", people, new_split):
                policy = policy_of(list(people), new_split)
                await admission.set_policy(policy)
                served.clear()  # a new policy starts the classes' ageing afresh
                # Levels are read from the policy in force.
                snapshot = await admission.snapshot()
                for ticket, _, user in snapshot.waiting:
                    person, _, source = user.partition(":")
                    level = policy.level(person, RequestSource(source or "chat"))
                    arrived[ticket] = (arrived[ticket][0], level)
            case ("wait", seconds):
                clock.now += seconds
        await claim()
        snapshot = await admission.snapshot()
        assert {t for t, _, _ in snapshot.waiting} == {t for t, s in state.items() if s == "waiting"}
        assert set(snapshot.running) == {t for t, s in state.items() if s == "running"}
        positions = await admission.positions("p")
        assert sorted(positions.values()) == [(i, len(positions)) for i in range(1, len(positions) + 1)]
