"""Scheduler tests for the generation service on the tiny model.

Submitting, cancelling and changing limits happen synchronously on the event
loop, so a test can set up a queue state exactly and check it before the
model thread reports anything.
"""

import asyncio

from generation.runtime.loading import shared_model
from generation.runtime.types import ErrorCode, Queued, RequestSource, RequestState

# The seeded tiny model does not stop on this prompt for thousands of tokens,
# so a request with a large budget keeps its slot until it is cancelled.
LONG = [{"role": "user", "content": "hello"}]
LONG_TOKENS = 3000


def ask(text="What is the capital of France?"):
    return [{"role": "user", "content": text}]


async def ready(service):
    while service.model_state == "loading":
        await asyncio.sleep(0.01)
    assert service.model_state == "ready"
    return service


async def collect(handle, timeout=60):
    """The request's events, as their JSON-safe dicts, through the terminal one."""
    async with asyncio.timeout(timeout):
        return [event.as_dict() async for event in handle]


async def first(handle_events, type_, timeout=30):
    async with asyncio.timeout(timeout):
        async for event in handle_events:
            if event.type == type_:
                return event.as_dict()
    raise AssertionError(f"no {type_} event")


def types(events):
    return [event["type"] for event in events]


async def test_event_sequence_and_exact_text(make_service):
    """A reply streams started, tokens and done; the deltas add up to the text."""
    service = await ready(await make_service(max_new_tokens=20))
    events = await collect(service.submit(user_id=1, messages=ask()))
    assert types(events)[0] == "started"
    assert types(events)[-1] == "done"
    done = events[-1]
    assert "".join(e["text"] for e in events if e["type"] == "token") == done["text"]
    assert done["finish_reason"] in ("stop", "length")
    assert done["usage"]["completion_tokens"] > 0
    assert done["usage"]["prompt_tokens"] == events[0]["prompt_tokens"] > 0
    assert 0 <= done["timings"]["queue_ms"] <= done["timings"]["ttft_ms"] <= done["timings"]["total_ms"]


async def test_max_new_tokens_is_capped_by_the_server(make_service):
    service = await ready(await make_service(max_new_tokens=7))
    done = (await collect(service.submit(user_id=1, messages=LONG, max_new_tokens=500)))[-1]
    assert done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 7


async def test_requests_wait_while_the_model_loads(make_service):
    """Submitted before the model is ready, a request queues and then completes."""
    service = await make_service(max_new_tokens=5)
    assert service.model_state == "loading"
    handle = service.submit(user_id=1, messages=ask())
    assert service.status()["model"]["state"] == "loading"
    events = await collect(handle)
    # It says the model is loading; no estimate of its start yet.
    assert events[0] == {
        "type": "queued",
        "position": 1,
        "waiting": 1,
        "model_state": "loading",
        "eta_s": None,
    }
    assert types(events)[-1] == "done"


async def test_cap_is_never_exceeded(make_service):
    """With cap 3, eight requests never overlap more than three at a time,
    judged from the records' started/finished intervals."""
    service = await ready(await make_service(max_concurrency=3, max_new_tokens=30))
    records = []
    service.record_listeners.append(records.append)
    handles = [service.submit(user_id=i, messages=ask(f"Question {i}")) for i in range(8)]
    await asyncio.gather(*(collect(h) for h in handles))
    assert [r.outcome for r in records] == ["completed"] * 8
    edges = sorted(
        [(r.started_at, 1) for r in records] + [(r.finished_at, -1) for r in records],
        key=lambda edge: (edge[0], edge[1]),
    )
    running, peak = 0, 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    assert peak == 3


async def test_fifo_order_and_live_positions(make_service):
    """Waiting requests learn their position on entry and on every change,
    and start in the order they arrived."""
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=5))
    records = {}
    service.record_listeners.append(lambda r: records.__setitem__(r.request_id, r))
    handles = [service.submit(user_id=i, messages=ask(f"Question {i}")) for i in range(4)]
    assert [r["position"] for r in service.status()["waiting"]] == [1, 2, 3]
    results = await asyncio.gather(*(collect(h) for h in handles))
    assert results[0][0]["type"] == "started"
    for index in (1, 2, 3):
        queued = [(e["position"], e["waiting"]) for e in results[index] if e["type"] == "queued"]
        # On entry it is last of `index` waiting; later arrivals raise the
        # count; each start ahead of it moves it up by one.
        assert queued[0] == (index, index)
        assert queued[-1][0] == 1
        positions = [p for p, _ in queued]
        assert positions == sorted(positions, reverse=True)
        assert set(range(1, index + 1)) <= set(positions)
    started = [records[h.id].started_at for h in handles]
    assert started == sorted(started)


async def test_queue_full_rejects_at_once(make_service):
    service = await ready(await make_service(max_concurrency=1, max_queue_size=1, max_new_tokens=LONG_TOKENS))
    records = []
    service.record_listeners.append(records.append)
    running = service.submit(user_id=1, messages=LONG)
    service.submit(user_id=2, messages=ask())
    rejected = service.submit(user_id=3, messages=ask())
    event = (await asyncio.wait_for(rejected.request.events.get(), 0.1)).as_dict()
    assert event["type"] == "error" and event["code"] == "queue_full"
    assert event["message"] == ErrorCode.QUEUE_FULL.text
    assert records[-1].outcome == "rejected"
    running.cancel()


async def test_busy_when_user_already_has_a_request(make_service):
    service = await ready(await make_service(max_new_tokens=LONG_TOKENS))
    first_handle = service.submit(user_id=7, messages=LONG)
    second = await collect(service.submit(user_id=7, messages=ask()))
    assert second == [{"type": "error", "code": "busy", "message": second[0]["message"]}]
    other_user = service.submit(user_id=8, messages=ask(), max_new_tokens=5)
    first_handle.cancel()
    assert types(await collect(other_user))[-1] == "done"


async def test_chat_and_api_requests_have_their_own_per_user_limits(make_service):
    """A person's API requests count apart from their chat reply, against
    the API's own limit; a limit raised live applies to the next request."""
    service = await ready(await make_service(max_new_tokens=LONG_TOKENS, max_active_api_per_user=2))
    api = dict(messages=LONG, source=RequestSource.API, api_key_id=3)
    running = [
        service.submit(user_id=7, messages=LONG),
        *(service.submit(user_id=7, **api) for _ in range(2)),
    ]
    assert [r.request.state for r in running] == [RequestState.RUNNING] * 3
    busy = [{"type": "error", "code": "busy", "message": ErrorCode.BUSY.text}]
    assert await collect(service.submit(user_id=7, **api)) == busy
    assert await collect(service.submit(user_id=7, messages=LONG)) == busy
    service.update_limits(service.limits.replace(max_active_api_per_user=3))
    running.append(service.submit(user_id=7, **api))
    assert running[-1].request.state is RequestState.RUNNING
    assert [r["source"] for r in service.status()["running"]] == ["chat", "api", "api", "api"]
    for handle in running:
        handle.cancel()


async def test_queue_timeout(make_service):
    service = await ready(
        await make_service(max_concurrency=1, queue_timeout_s=0.3, max_new_tokens=LONG_TOKENS)
    )
    records = []
    service.record_listeners.append(records.append)
    running = service.submit(user_id=1, messages=LONG)
    waiting = service.submit(user_id=2, messages=ask())
    events = await collect(waiting)
    assert types(events) == ["queued", "error"]
    assert events[-1]["code"] == "queue_timeout"
    assert service.status()["waiting"] == []
    assert records[-1].outcome == "timeout"
    running.cancel()


async def test_cancel_queued_moves_others_up(make_service):
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
    running = service.submit(user_id=1, messages=LONG)
    second = service.submit(user_id=2, messages=ask())
    third = service.submit(user_id=3, messages=ask())
    second.cancel()
    assert [r["request"] for r in service.status()["waiting"]] == [third.id]
    second_events = await collect(second)
    assert types(second_events) == ["queued", "queued", "done"]
    assert second_events[-1]["finish_reason"] == "cancelled"
    third_events = third.request.events
    assert third_events.get_nowait() == Queued(position=2, waiting=2)
    assert third_events.get_nowait() == Queued(position=1, waiting=1)
    running.cancel()
    third.cancel()


async def test_cancel_running_keeps_partial_text_and_frees_slot(make_service):
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
    records = []
    service.record_listeners.append(records.append)
    running = service.submit(user_id=1, messages=LONG)
    waiting = service.submit(user_id=2, messages=ask(), max_new_tokens=5)
    events = aiter(running)
    received = []
    async with asyncio.timeout(30):
        async for event in events:
            received.append(event.as_dict())
            if sum(e["type"] == "token" for e in received) == 5:
                break
    running.cancel()
    received += [event.as_dict() async for event in events]
    done = received[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled"
    assert done["text"] == "".join(e["text"] for e in received if e["type"] == "token")
    assert 5 <= done["usage"]["completion_tokens"] < LONG_TOKENS
    assert records[0].outcome == "cancelled"
    # The slot went to the next in line.
    assert types(await collect(waiting))[-1] == "done"


async def test_raising_the_cap_admits_waiting_requests_at_once(make_service):
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
    handles = [service.submit(user_id=i, messages=LONG) for i in range(4)]
    assert len(service.running) == 1 and len(service.queue) == 3
    service.update_limits(service.limits.replace(max_concurrency=3))
    assert len(service.running) == 3 and len(service.queue) == 1
    assert service.queue[0].id == handles[3].id
    for handle in handles:
        handle.cancel()


async def test_lowering_the_cap_lets_running_requests_finish(make_service):
    service = await ready(await make_service(max_concurrency=3, max_new_tokens=40))
    records = {}
    service.record_listeners.append(lambda r: records.__setitem__(r.request_id, r))
    handles = [service.submit(user_id=i, messages=ask(f"Question {i}")) for i in range(4)]
    assert len(service.running) == 3
    service.update_limits(service.limits.replace(max_concurrency=1))
    assert len(service.running) == 3, "running requests are not stopped"
    await asyncio.gather(*(collect(h) for h in handles))
    first_three = [records[h.id] for h in handles[:3]]
    assert all(r.outcome == "completed" for r in records.values())
    # The fourth waited until running fell below the new cap of 1: until all three ended.
    assert records[handles[3].id].started_at >= max(r.finished_at for r in first_three)


async def test_lowering_the_queue_size_drops_nobody(make_service):
    service = await ready(await make_service(max_concurrency=1, max_queue_size=5, max_new_tokens=LONG_TOKENS))
    handles = [service.submit(user_id=i, messages=LONG) for i in range(5)]
    service.update_limits(service.limits.replace(max_queue_size=1))
    assert len(service.queue) == 4
    rejected = await collect(service.submit(user_id=99, messages=ask()))
    assert rejected[0]["code"] == "queue_full"
    for handle in handles:
        handle.cancel()
    for handle in handles:
        assert types(await collect(handle))[-1] == "done"


async def test_status_snapshot(make_service):
    service = await ready(await make_service(max_concurrency=1, max_new_tokens=LONG_TOKENS))
    running = service.submit(user_id="alice", messages=LONG, meta={"conversation": 3})
    waiting = service.submit(user_id="bob", messages=ask())
    await first(aiter(running), "token")
    await asyncio.sleep(0.2)
    status = service.status()
    assert status["model"]["state"] == "ready"
    assert status["limits"]["max_concurrency"] == 1
    assert [(r["user"], r["meta"]) for r in status["running"]] == [("alice", {"conversation": 3})]
    assert status["running"][0]["tokens"] > 0
    assert [(w["position"], w["user"]) for w in status["waiting"]] == [(1, "bob")]
    assert status["tokens_per_s"] > 0
    running.cancel()
    waiting.cancel()


async def test_a_failed_forward_pass_fails_its_batch_and_service_goes_on(make_service, caplog):
    """Fault injection: the decode step raises once. The batch's requests get
    `internal`, the traceback is logged, and the next request is served."""
    service = await ready(await make_service(max_concurrency=2, max_new_tokens=LONG_TOKENS))
    loaded = shared_model(*service.backend._load.args)
    original = loaded.model.forward
    calls = {"n": 0}

    def failing_forward(*args, **kwargs):
        # Prefills (many tokens) pass; the first decode step of both replies
        # (two tokens in all, one each) fails.
        if kwargs["input_ids"].numel() == 2:
            calls["n"] += 1
            raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    loaded.model.forward = failing_forward
    try:
        handles = [service.submit(user_id=i, messages=LONG) for i in range(2)]
        results = await asyncio.gather(*(collect(h) for h in handles))
    finally:
        del loaded.model.forward
    assert calls["n"] == 1
    for events in results:
        assert events[-1]["type"] == "error" and events[-1]["code"] == "internal"
    assert "injected fault" in caplog.text
    assert service.running == {}
    service.update_limits(service.limits.replace(max_new_tokens=5))
    assert types(await collect(service.submit(user_id=3, messages=ask())))[-1] == "done"


async def test_too_long_is_refused(make_service):
    """A message that alone fills the model's context is refused."""
    service = await ready(await make_service(max_new_tokens=8000))
    events = await collect(service.submit(user_id=1, messages=ask("word " * 8200)))
    assert events[-1]["type"] == "error" and events[-1]["code"] == "too_long"
    assert service.running == {}


async def test_model_load_failure_is_reported(make_service):
    def broken():
        raise OSError("no such model")

    service = await make_service(load=broken)
    queued = service.submit(user_id=1, messages=ask())
    events = await collect(queued)
    assert events[-1]["code"] == "unavailable"
    assert events[-1]["message"] == "The model could not be loaded: no such model"
    assert service.status()["model"] == {
        "name": "",
        "state": "failed",
        "error": "The model could not be loaded: no such model",
        "backend": "local",
        "host": "in-process",
        "context_tokens": 0,
    }
    refused = await collect(service.submit(user_id=2, messages=ask()))
    assert refused == [events[-1]]
