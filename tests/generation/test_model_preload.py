"""Opening the chat page starts loading the model.

A first load takes a minute or two on a small machine; it starts when a
logged-in person's chat socket connects, not when the first message is
sent, so that the person's first reply waits less (or not at all).
"""

import asyncio

import pytest
from django.contrib.auth.models import AnonymousUser

from generation.runtime import registry

pytestmark = pytest.mark.django_db(transaction=True)


def this_loops_service():
    service = registry._service
    if service is not None and service.loop is asyncio.get_running_loop():
        return service
    return None


async def test_opening_the_chat_starts_the_model_load(tiny_model, alice, connect_as):
    """Connecting, without sending anything, starts the service and its model load."""
    assert this_loops_service() is None
    await connect_as(alice)
    service = this_loops_service()
    assert service is not None, "the chat socket connected without starting the model load"
    try:
        for _ in range(600):
            if service.model_state != "loading":
                break
            await asyncio.sleep(0.05)
        assert service.model_state == "ready", service.model_error
    finally:
        service.stop()


async def test_a_logged_out_socket_starts_nothing(tiny_model, connect_as):
    """A socket without a login is closed with 4401 and loads no model."""
    chat = await connect_as(AnonymousUser())
    assert await chat.receive_output(10) == {"type": "websocket.close", "code": 4401}
    assert this_loops_service() is None
