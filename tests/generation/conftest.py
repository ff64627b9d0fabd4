"""Fixtures for the chat tests: users, a ready generation service, sockets."""

import asyncio
import functools

import pytest

from generation import consumers
from generation.runtime.registry import get_service

TIMEOUT = 10


@pytest.fixture
def alice(django_user_model):
    """A user with a login."""
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def bob(django_user_model):
    """A second user, for isolation tests."""
    return django_user_model.objects.create_user(username="bob", password="pw-bob-123")


@pytest.fixture
async def service(tiny_model):
    """This loop's generation service on the tiny model, with its model loaded."""
    svc = get_service()
    for _ in range(600):
        if svc.model_state == "ready":
            break
        await asyncio.sleep(0.05)
    assert svc.model_state == "ready", svc.model_error
    yield svc
    svc.stop()


@pytest.fixture
def connect_as(websocket_as):
    """Open chat sockets as given users; they are closed at teardown."""
    return functools.partial(websocket_as, consumers.ChatConsumer, "/ws/chat/")


async def receive_until(communicator, kind: str, timeout: float = TIMEOUT) -> list[dict]:
    """Frames received up to and including the first of type `kind`."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] == kind:
            return frames
