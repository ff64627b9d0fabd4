"""Fixtures for the console tests: users, a service with its control, sockets."""

import asyncio
import functools

import pytest

from generation.runtime.registry import get_service
from queueadmin import control
from queueadmin.consumers import QueueConsumer
from tests.polling import wait_for

TIMEOUT = 10
LONG = [{"role": "user", "content": "hello"}]  # the tiny model does not stop on this
# A valid settings form, to change one field at a time.
LIMITS = {
    "max_concurrency": 4,
    "max_queue_size": 32,
    "max_active_per_user": 1,
    "queue_timeout_s": 300,
    "max_new_tokens": 512,
    "max_active_api_per_user": 2,
}


async def next_answer(socket) -> dict:
    """The console socket's next frame that is not a status push (those come every 0.5 s)."""
    while (frame := await socket.receive_json_from(timeout=TIMEOUT))["type"] == "queue.status":
        pass
    return frame


@pytest.fixture
def staff(django_user_model):
    """A staff member who may change the limits (not a superuser: staff status
    and that one permission are what the console asks for)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="sam", password="pw-sam-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_generationsettings"))
    return user


@pytest.fixture
def watcher(django_user_model):
    """A staff member without the permission to change the limits."""
    return django_user_model.objects.create_user(username="wes", password="pw-wes-123", is_staff=True)


@pytest.fixture
def member(django_user_model):
    """A logged-in user who is not staff."""
    return django_user_model.objects.create_user(username="mia", password="pw-mia-123")


@pytest.fixture
async def live(tiny_model):
    """This loop's generation service on the tiny model, ready, with its control
    joined to the channel layer and the saved settings applied."""
    service = get_service()
    ctl = control.current()
    await asyncio.wait_for(ctl.ready.wait(), 60)
    await wait_for(lambda: service.model_state == "ready", timeout=60)
    yield service
    for request in [*service.running.values(), *service.queue]:
        service.cancel(request.id)
    service.stop()


@pytest.fixture
def console_socket(websocket_as):
    """Open /ws/queue/ sockets as given users; closed at teardown."""
    return functools.partial(websocket_as, QueueConsumer, "/ws/queue/")
