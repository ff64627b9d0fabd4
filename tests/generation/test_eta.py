"""The start estimate of waiting requests (`eta_s`): the formula, and the
service's `queued` events on the tiny model."""

import asyncio

from generation.runtime import eta
from generation.runtime.types import Queued
from tests.generation.test_service import LONG, LONG_TOKENS, ask, first, ready


def test_the_formula_is_slot_wait_plus_the_share_of_the_queue_ahead():
    """Two slots, both busy, mean run 10 s: the first slot frees in 3 s
    (10 - 7); each place further back adds 10/2 s."""

    def at(position):
        return eta.start_in(position=position, capacity=2, mean_s=10, running_elapsed_s=[4, 7])

    assert [at(p) for p in (1, 2, 3)] == [3, 8, 13]
    # A reply running past the mean is expected to end any moment.
    assert eta.start_in(position=1, capacity=1, mean_s=10, running_elapsed_s=[25]) == 0
    # Slots not all seen here (the site queue): Gradio's mean / C for a slot to free.
    assert eta.start_in(position=2, capacity=4, mean_s=8, running_elapsed_s=[]) == 2 + 2


def test_estimates_are_rounded_without_false_precision():
    assert [eta.rounded(s) for s in (0, 0.2, 3.4, 10)] == [1, 1, 4, 10]
    assert [eta.rounded(s) for s in (12.4, 13, 58)] == [10, 15, 60]
    assert [eta.rounded(s) for s in (61, 124, 300)] == [60, 120, 300]
    assert [eta.rounded(s) for s in (301, 629)] == [300, 600]


def test_no_mean_until_enough_replies_finished():
    times = eta.RunTimes()
    for seconds in (4, 6):
        times.add(seconds)
        assert times.mean() is None
    times.add(8)
    assert times.mean() == 6


def drained(handle):
    found = []
    while not handle.request.events.empty():
        found.append(handle.request.events.get_nowait())
    return found


async def test_eta_is_null_without_history_and_counts_once_replies_finished(make_service):
    """A waiting request gets no estimate before three replies completed, and
    an estimate in whole seconds after."""
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
    long = service.submit(user_id=0, messages=LONG)
    waiting = service.submit(user_id=1, messages=ask())
    assert drained(waiting) == [Queued(position=1, waiting=1, model_state="ready", eta_s=None)]
    long.cancel()
    waiting.cancel()
    for index in range(3):
        handle = service.submit(user_id=2, messages=ask(f"Question {index}"), max_new_tokens=5)
        await first(handle, "done")
    assert service.run_times.mean() is not None
    long = service.submit(user_id=0, messages=LONG)
    waiting = service.submit(user_id=1, messages=ask())
    (queued,) = drained(waiting)
    assert isinstance(queued.eta_s, int) and queued.eta_s >= 1
    assert service.status()["waiting"][0]["eta_s"] == queued.eta_s
    long.cancel()
    waiting.cancel()


async def test_eta_grows_with_position(make_service):
    """With one slot and replies that take 20 s here, the second in line
    starts about 20 s after the first, the third 20 s after that."""
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
    for _ in range(3):
        service.run_times.add(20.0)  # as if three 20 s replies had completed here
    long = service.submit(user_id=0, messages=LONG)
    waiting = [service.submit(user_id=i, messages=ask()) for i in (1, 2, 3)]
    etas = [drained(handle)[-1].eta_s for handle in waiting]
    assert etas == [20, 40, 60]
    long.cancel()
    for handle in waiting:
        handle.cancel()
    await asyncio.sleep(0)


def test_a_seed_goes_before_what_finished_here_and_the_window_keeps_the_newest():
    times = eta.RunTimes(window=3)
    times.add(30)
    times.seed([1, 2, 3])
    assert times.mean() == (2 + 3 + 30) / 3
