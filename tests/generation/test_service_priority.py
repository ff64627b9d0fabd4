"""Priority classes in one process's own queue (issue #15), on the tiny model.

What a waiting person sees: the order replies start in, the positions in
their `queued` frames, and the frame that says they were moved back.
"""

import asyncio

from generation.runtime.admission.order import PriorityClass, PriorityPolicy
from generation.runtime.types import Queued, RequestSource

LONG = [{"role": "user", "content": "hello"}]
LONG_TOKENS = 3000
POLICY = PriorityPolicy(
    classes=(
        PriorityClass("staff", 1, frozenset({"10"})),
        PriorityClass("api", 200, api=True),
    )
)


async def ready(service):
    while service.model_state == "loading":
        await asyncio.sleep(0.01)
    return service


def drain(handle) -> list:
    events = []
    while not handle.request.events.empty():
        events.append(handle.request.events.get_nowait())
    return events


async def test_a_priority_request_overtakes_and_the_waiting_one_is_told(make_service):
    """Cap 1, one reply running, an ordinary chat request waiting at 1: a
    staff member's request arrives and starts next; the ordinary one is
    shown position 2 with moved_back, and its frame says so on the wire."""
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
    service.update_priority(POLICY)
    running = service.submit(user_id=1, messages=LONG)
    ordinary = service.submit(user_id=2, messages=LONG)
    assert drain(ordinary) == [Queued(position=1, waiting=1)]
    staff = service.submit(user_id=10, messages=LONG)
    assert drain(staff) == [Queued(position=1, waiting=2)]
    (moved,) = drain(ordinary)
    assert moved == Queued(position=2, waiting=2, moved_back=True)
    assert moved.as_dict()["moved_back"] is True
    waiting = service.status()["waiting"]
    assert [(w["request"], w["position"], w["class"]) for w in waiting] == [
        (staff.id, 1, "staff"),
        (ordinary.id, 2, "default"),
    ]
    running.cancel()
    started = [event async for event in _until_started(staff)]
    assert started[-1].type == "started"
    assert ordinary.id in [r.id for r in service.queue]
    staff.cancel()
    ordinary.cancel()


async def _until_started(handle):
    async with asyncio.timeout(30):
        async for event in handle:
            yield event
            if event.type == "started":
                return


async def test_api_traffic_waits_behind_chat_and_without_a_policy_it_is_fifo(make_service):
    """With a policy that puts API traffic last, a chat request that arrives
    after an API request goes ahead of it (which is told it moved back);
    with no policy (the default), arrival order, as before."""
    for policy, first in ((POLICY, "chat"), (None, "api")):
        service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
        service.update_priority(policy)
        running = service.submit(user_id=1, messages=LONG)
        api = service.submit(user_id=2, messages=LONG, source=RequestSource.API)
        chat = service.submit(user_id=3, messages=LONG)
        order = [r["request"] for r in service.status()["waiting"]]
        assert order == ([chat.id, api.id] if first == "chat" else [api.id, chat.id])
        moved_back = [e.moved_back for e in drain(api) if isinstance(e, Queued)]
        assert moved_back == ([False, True] if policy else [False, False])
        for handle in (running, api, chat):
            handle.cancel()
