"""How the service applies a backend's reports that the local model cannot
be made to send: an engine that goes down and comes back, an engine that is
busy (HTTP 429/503), and a remote usage chunk.

A fake backend is the honest tool here: it injects exactly those reports,
which the `openai` backend sends when a remote engine misbehaves. The rest
of the service's behaviour is tested on the real (tiny) model in
test_service.py.
"""

import asyncio

import pytest

from generation.runtime.backends import Backend
from generation.runtime.service import GenerationService
from generation.runtime.types import (
    BackendFailed,
    BackendInfo,
    BackendReady,
    Done,
    Error,
    ErrorCode,
    FinishReason,
    Limits,
    Queued,
    RequestDeferred,
    RequestFinished,
    RequestStarted,
    Started,
    TextDelta,
    Token,
)

ENGINE = BackendInfo(kind="openai", host="http://127.0.0.1:8100/v1", model="smollm2", context_tokens=4096)
DOWN = "The model server at http://127.0.0.1:8100/v1 cannot be reached."


class FakeEngine(Backend):
    """Records what the service asks; the test sends the reports."""

    kind = "openai"

    def __init__(self):
        self.deliver = None
        self.admitted: list[str] = []
        self.cancelled: list[str] = []
        self.report_on_admit = None  # reports sent from inside admit()

    def start(self, deliver):
        self.deliver = deliver

    def admit(self, request):
        self.admitted.append(request.id)
        if self.report_on_admit is not None:
            self.deliver(self.report_on_admit(request))

    def cancel(self, request_id):
        self.cancelled.append(request_id)

    def stop(self):
        pass

    def info(self):
        return BackendInfo(kind="openai", host=ENGINE.host)


@pytest.fixture
async def engine():
    return FakeEngine()


@pytest.fixture
async def make(engine):
    services = []

    def factory(**limits):
        service = GenerationService(backend=engine, limits=Limits(**limits))
        service.start()
        services.append(service)
        return service

    yield factory
    for service in services:
        service.stop()


async def applied(engine, *reports):
    """Send reports and let the loop apply them (they are applied in a callback of their own)."""
    engine.deliver(list(reports))
    await asyncio.sleep(0)


def drained(handle) -> list:
    """The events queued for `handle` so far."""
    events = []
    while not handle.request.events.empty():
        events.append(handle.request.events.get_nowait())
    return events


async def test_status_names_the_backend_before_and_after_it_is_ready(make, engine):
    service = make()
    assert service.status()["model"] == {
        "name": "",
        "state": "loading",
        "error": "",
        "backend": "openai",
        "host": ENGINE.host,
        "context_tokens": 0,
    }
    await applied(engine, BackendReady(ENGINE))
    model = service.status()["model"]
    assert (model["state"], model["name"], model["context_tokens"]) == ("ready", "smollm2", 4096)
    assert service.status()["limits"] == Limits().as_dict()


async def test_an_engine_that_goes_down_fails_the_waiting_and_refuses_new_ones_in_its_words(make, engine):
    """Waiting requests end with `unavailable` and the backend's sentence; new
    ones get it at once; when the engine is back, requests run again."""
    service = make(max_concurrency=1)
    await applied(engine, BackendReady(ENGINE))
    running = service.submit(user_id=1, messages=[])
    waiting = service.submit(user_id=2, messages=[])
    await applied(engine, BackendFailed(DOWN))
    assert drained(waiting)[-1] == Error(code=ErrorCode.UNAVAILABLE, message=DOWN)
    assert not service.queue and running.id in service.running  # the backend's to fail
    refused = service.submit(user_id=3, messages=[])
    assert drained(refused) == [Error(code=ErrorCode.UNAVAILABLE, message=DOWN)]
    assert service.status()["model"]["state"] == "failed"
    assert service.status()["model"]["error"] == DOWN

    await applied(engine, RequestFinished(running.id, FinishReason.STOP))
    await applied(engine, BackendReady(ENGINE))
    assert service.status()["model"]["state"] == "ready" and service.status()["model"]["error"] == ""
    again = service.submit(user_id=4, messages=[])
    assert engine.admitted[-1] == again.id


async def test_a_busy_engine_puts_the_request_back_at_the_head_and_holds_admissions(make, engine):
    """RequestDeferred: the slot is free, the request is first in the queue and
    told so, nothing starts before retry_after_s, and then it starts again."""
    service = make(max_concurrency=2)
    await applied(engine, BackendReady(ENGINE))
    first = service.submit(user_id=1, messages=[])
    assert engine.admitted == [first.id] and first.request.started_at is not None
    await applied(engine, RequestDeferred(first.id, retry_after_s=0.3))
    assert service.running == {} and [r.id for r in service.queue] == [first.id]
    assert first.request.started_at is None
    assert drained(first) == [Queued(position=1, waiting=1)]

    second = service.submit(user_id=2, messages=[])  # a free slot, but the engine asked us to wait
    assert engine.admitted == [first.id]
    assert drained(second) == [Queued(position=2, waiting=2)]
    assert [w["request"] for w in service.status()["waiting"]] == [first.id, second.id]

    await asyncio.sleep(0.4)
    assert engine.admitted == [first.id, first.id, second.id]
    assert len(service.running) == 2


async def test_a_deferred_request_keeps_its_queue_deadline(make, engine):
    """Going back to the queue does not restart the queue timeout: it times
    out when its original wait runs out."""
    service = make(queue_timeout_s=0.5)
    await applied(engine, BackendReady(ENGINE))
    handle = service.submit(user_id=1, messages=[])
    await asyncio.sleep(0.3)
    await applied(engine, RequestDeferred(handle.id, retry_after_s=5))
    drained(handle)
    await asyncio.sleep(0.35)
    assert drained(handle) == [Error(code=ErrorCode.QUEUE_TIMEOUT, message=ErrorCode.QUEUE_TIMEOUT.text)]
    assert not service.queue


async def test_text_deltas_and_a_remote_usage_chunk_set_the_counts(make, engine):
    """Held-back text (tokens=0) counts no token; the usage the engine reports
    at the end replaces the counted numbers."""
    service = make()
    records = []
    service.record_listeners.append(records.append)
    await applied(engine, BackendReady(ENGINE))
    handle = service.submit(user_id=1, messages=[])
    await applied(engine, RequestStarted(handle.id, 12, 0, 100))
    await applied(engine, TextDelta(handle.id, "", tokens=0))
    assert handle.request.first_token_at is None
    await applied(engine, TextDelta(handle.id, "Par", tokens=1), TextDelta(handle.id, "is", tokens=0))
    assert handle.request.first_token_at is not None and handle.request.completion_tokens == 1
    await applied(
        engine, RequestFinished(handle.id, FinishReason.STOP, prompt_tokens=15, completion_tokens=3)
    )
    events = drained(handle)
    assert [type(e) for e in events] == [Started, Token, Token, Done]
    done = events[-1]
    assert done.text == "Paris" and (done.usage.prompt_tokens, done.usage.completion_tokens) == (15, 3)
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (15, 3)


async def test_reports_sent_inside_admit_are_applied_after_it(make, engine):
    """A backend that reports at once (a refused connection) never re-enters
    the service's scheduling: its reports wait for a loop callback."""
    service = make(max_concurrency=1)
    engine.report_on_admit = lambda request: [RequestDeferred(request.id, retry_after_s=60)]
    await applied(engine, BackendReady(ENGINE))
    handles = [service.submit(user_id=i, messages=[]) for i in range(3)]
    assert len(service.running) == 1 and len(service.queue) == 2  # nothing applied yet
    await asyncio.sleep(0)
    assert service.running == {} and [r.id for r in service.queue] == [h.id for h in handles]
    assert engine.admitted == [handles[0].id]
