"""One process's own start order counts service as it is generated (issue #15).

On StartOrder with requests made by hand (no model): the order of the
waiting requests while a reply is still running.
"""

from generation.runtime.admission.order import PriorityClass, PriorityPolicy
from generation.runtime.requests import GenerationRequest
from generation.runtime.sampling import SamplingParams
from generation.runtime.startorder import StartOrder
from generation.runtime.types import RequestState

TEAM = PriorityPolicy(classes=(PriorityClass("team", 1, frozenset({"1", "2"})),))


def request(user_id: int) -> GenerationRequest:
    return GenerationRequest(
        user_id=user_id,
        messages=[{"role": "user", "content": "hi"}],
        params=SamplingParams(max_new_tokens=16),
        meta={},
    )


def test_a_running_reply_counts_for_its_person_before_it_ends():
    """Ann's reply made 100 tokens and ended; the heavy user's reply has made
    500 so far and still runs. Each has one request waiting (the heavy
    user's older): ann's starts first, as the heavy user has received more,
    though none of their 500 tokens has ended yet. At the end only the rest
    is counted (no token twice)."""
    order = StartOrder(half_life_s=0, clock=lambda: 1000.0)
    order.policy = TEAM
    ann_done = request(1)
    order.joined(ann_done, [])
    ann_done.completion_tokens = 100
    order.charge(ann_done)
    heavy_running, heavy_next, ann_next = request(2), request(2), request(1)
    order.joined(heavy_running, [])
    order.joined(heavy_next, [heavy_running])
    order.joined(ann_next, [heavy_running, heavy_next])
    heavy_running.completion_tokens = 500
    assert order.order([heavy_next, ann_next], [heavy_running]) == [ann_next, heavy_next]
    heavy_running.completion_tokens = 520
    order.charge(heavy_running)
    assert order.fair.value("2", 1000.0) == 520


def test_a_person_who_joins_is_lifted_to_what_a_running_reply_has_made():
    """The heavy user's reply has made 500 tokens, still running, when ann
    sends a request: she joins at those 500 (not at the 0 counted before the
    reply ends) and starts first (fewer requests ahead); her reply makes 100
    and ends. The heavy user's reply is at 550 when she sends again: the
    heavy user's waiting request goes first now, as ann has received more
    (600) since she became active."""
    order = StartOrder(half_life_s=0, clock=lambda: 1000.0)
    order.policy = TEAM
    heavy_running, heavy_next = request(2), request(2)
    order.joined(heavy_running, [])
    heavy_running.state = RequestState.RUNNING
    order.joined(heavy_next, [heavy_running])
    heavy_running.completion_tokens = 500
    ann = request(1)
    order.joined(ann, [heavy_running, heavy_next])
    assert order.order([heavy_next, ann], [heavy_running]) == [ann, heavy_next]
    ann.completion_tokens = 100
    order.charge(ann)
    heavy_running.completion_tokens = 550
    ann_again = request(1)
    order.joined(ann_again, [heavy_running, heavy_next])
    assert order.order([heavy_next, ann_again], [heavy_running]) == [heavy_next, ann_again]
