"""A request cancelled by staff from the console tells its person so."""

import functools

import pytest

from generation.consumers import ChatConsumer
from generation.models import Message
from tests.generation.conftest import receive_until
from tests.queueadmin.conftest import TIMEOUT, next_answer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def long_replies(settings):
    """Replies long enough to be running when staff cancel them, one slot."""
    settings.GENERATION_MAX_CONCURRENCY = 1
    settings.GENERATION_MAX_NEW_TOKENS = 4000


@pytest.fixture
def chat_as(websocket_as):
    return functools.partial(websocket_as, ChatConsumer, "/ws/chat/")


async def test_a_console_cancel_reaches_the_person_as_staffs(
    long_replies, live, staff, console_socket, chat_as, django_user_model
):
    """Staff cancel a running and a queued reply: each person's `done` says
    `cancelled_by_staff`, and so do the stored messages; the person's own
    Stop stays plain."""
    alice = await django_user_model.objects.acreate(username="alice")
    bob = await django_user_model.objects.acreate(username="bob")
    running, waiting = await chat_as(alice), await chat_as(bob)
    await running.send_json_to({"type": "send", "conversation": None, "content": "hello"})
    started = (await receive_until(running, "started"))[-1]
    await waiting.send_json_to({"type": "send", "conversation": None, "content": "me too"})
    queued = (await receive_until(waiting, "queued"))[0]

    console = await console_socket(staff)
    await console.receive_json_from(timeout=TIMEOUT)
    for request in (queued["request"], started["request"]):  # the queued first: it stays queued
        await console.send_json_to({"type": "cancel", "request": request})
        assert await next_answer(console) == {"type": "cancel.sent", "request": request}

    done = (await receive_until(running, "done"))[-1]
    assert (done["finish_reason"], done["code"]) == ("cancelled", "cancelled_by_staff")
    reply = await Message.objects.aget(pk=started["message"])
    assert (reply.status, reply.error_code) == ("cancelled", "cancelled_by_staff")
    done = (await receive_until(waiting, "done"))[-1]
    assert (done["message"], done["code"]) == (None, "cancelled_by_staff")
    question = await Message.objects.aget(pk=queued["user_message"])
    assert (question.status, question.error_code) == ("cancelled", "cancelled_by_staff")

    await running.send_json_to({"type": "send", "conversation": None, "content": "again"})
    await receive_until(running, "started")
    await running.send_json_to({"type": "cancel"})
    assert (await receive_until(running, "done"))[-1]["code"] is None
