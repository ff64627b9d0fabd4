"""Fixtures for the chat tests: users, a ready generation service, sockets."""

import asyncio
import functools
import time

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
def deleted_after_read(monkeypatch):
    """Make every read of a conversation delete it right after, as a delete
    from another tab or process landing between a read and a write would."""
    from generation import selectors
    from generation.models import Conversation

    read = selectors.conversation_get

    def read_then_deleted(**kwargs):
        found = read(**kwargs)
        Conversation.objects.filter(pk=found.pk).delete()
        return found

    monkeypatch.setattr(selectors, "conversation_get", read_then_deleted)


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


async def close_code(communicator, within: float) -> int:
    """The code the server closes the socket with, within `within` seconds;
    frames before the close are skipped. Fails (TimeoutError) if it stays open."""
    deadline = time.monotonic() + within
    while True:
        output = await communicator.receive_output(timeout=max(0.01, deadline - time.monotonic()))
        if output["type"] == "websocket.close":
            return output.get("code")


async def reply_ending(communicator, within: float) -> tuple[dict, list[dict]]:
    """The reply's terminal frame (done or error) and the frames before it,
    within `within` seconds. Fails (TimeoutError) if the reply goes on."""
    deadline = time.monotonic() + within
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=max(0.01, deadline - time.monotonic()))
        if frame["type"] in ("done", "error"):
            return frame, frames
        frames.append(frame)
