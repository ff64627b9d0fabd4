"""The service with the bundled SmolLM2: answers, and a loop that stays responsive."""

import asyncio
import functools
import time

import pytest
from django.conf import settings

from generation.runtime.backends.local import LocalBackend
from generation.runtime.loading import shared_model
from generation.runtime.service import GenerationService
from generation.runtime.types import Limits

pytestmark = pytest.mark.real_model


@pytest.fixture
async def real_service(real_model):
    service = GenerationService(
        backend=LocalBackend(functools.partial(shared_model, "", "cpu", settings.GENERATION_CACHE_DIR)),
        limits=Limits(max_concurrency=8, max_new_tokens=32),
    )
    service.start()
    while service.model_state == "loading":
        await asyncio.sleep(0.01)
    yield service
    service.stop()


async def test_service_answers_paris(real_service):
    """Sampled at the chat's defaults (temperature 0.2, top_p 0.9, penalty
    1.1; seeded, so that the test is repeatable), SmolLM2 names Paris."""
    handle = real_service.submit(
        user_id=1, messages=[{"role": "user", "content": "What is the capital of France?"}], seed=0
    )
    events = await drain(handle)
    assert events[-1]["type"] == "done"
    assert "Paris" in events[-1]["text"]


async def test_event_loop_never_waits_on_a_forward_pass(real_service):
    """While 8 requests generate, a coroutine sleeping 10 ms in a loop never
    sees more than 50 ms of extra delay."""
    questions = [f"Write a short poem about the number {i}." for i in range(8)]
    handles = [
        real_service.submit(user_id=i, messages=[{"role": "user", "content": q}])
        for i, q in enumerate(questions)
    ]
    generating = asyncio.gather(*(drain(handle) for handle in handles))
    delays = []
    while not generating.done():
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        delays.append(time.perf_counter() - before - 0.01)
    results = await generating
    assert all(events[-1]["type"] == "done" for events in results)
    assert sum(events[-1]["usage"]["completion_tokens"] for events in results) >= 8 * 16
    assert len(delays) > 50
    assert max(delays) < 0.05, f"worst extra delay {max(delays) * 1000:.0f} ms"


async def drain(handle):
    return [event.as_dict() async for event in handle]
