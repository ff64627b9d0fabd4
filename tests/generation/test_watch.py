"""Revoked access and deleted conversations reach open chat sockets (generation.watch).

The sockets go through the real session and auth middleware with a session
that Django's login created, so that logging out deletes a real session row.
"""

import logging
import time

import pytest
from channels.db import database_sync_to_async

from generation.consumers import ChatConsumer
from generation.models import Conversation, Message
from queueadmin.models import GenerationRecord
from tests.generation.conftest import close_code, receive_until, reply_ending
from tests.polling import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-alice-123"  # alice's, see conftest


def send_frame(content="hello", conversation=None):
    return {"type": "send", "conversation": conversation, "content": content}


@pytest.fixture
def chat_as(websocket_logged_in):
    """Log in as alice and open a chat socket with her session: (client, socket)."""
    return lambda: websocket_logged_in(ChatConsumer, "/ws/chat/", "alice", PASSWORD)


async def test_logout_closes_the_socket_and_stops_its_reply(service, alice, chat_as):
    """Logging out (the session row is deleted, as it is when another process
    serves the logout) closes the open socket with 4401 within a second; its
    reply stops and is saved as cancelled, and no frame follows the close."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    client, chat = await chat_as()
    await chat.send_json_to(send_frame())
    started = (await receive_until(chat, "started"))[-1]
    await client.alogout()
    began = time.monotonic()
    assert await close_code(chat, within=1.0) == 4401
    assert time.monotonic() - began < 1.0
    assert await chat.receive_nothing(timeout=0.3)
    await wait_for(lambda: not any(r.user_id == alice.pk for r in service.running.values()), timeout=1.0)
    reply = await wait_for(
        lambda: Message.objects.filter(pk=started["message"], status=Message.Status.CANCELLED).afirst()
    )
    assert reply.content


async def test_a_reply_waiting_for_its_page_stops_at_a_logout_or_a_delete(service, alice, chat_as):
    """A reply whose page is gone (within the re-attach grace) still stops
    within a second when its person logs out elsewhere, or when its
    conversation is deleted: nobody may come back for it."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    for ending in ("logout", "delete"):
        client, chat = await chat_as()
        await chat.send_json_to(send_frame())
        accepted, started = (await receive_until(chat, "started"))[:2]
        await chat.disconnect()
        assert any(r.user_id == alice.pk for r in service.running.values())  # waiting for its page
        if ending == "logout":
            await client.alogout()
        else:
            await Conversation.objects.filter(pk=accepted["conversation"]).adelete()
        await wait_for(lambda: not any(r.user_id == alice.pk for r in service.running.values()), timeout=1.5)
        if ending == "logout":
            reply = await wait_for(
                lambda pk=started["message"]: Message.objects.filter(
                    pk=pk, status=Message.Status.CANCELLED
                ).afirst()
            )
            assert reply.content


async def test_a_frame_sent_right_after_logout_is_refused(service, alice, chat_as):
    """A message sent after the logout, before the watch's next check, is not
    stored and gets no reply: the socket closes with 4401."""
    client, chat = await chat_as()
    await client.alogout()
    await chat.send_json_to(send_frame("after logout"))
    assert await close_code(chat, within=1.0) == 4401
    assert await Message.objects.acount() == 0
    assert await Conversation.objects.acount() == 0


async def test_deactivation_closes_the_socket(service, alice, chat_as):
    """A socket stays open while its login stands; deactivating the account
    closes it with 4401 within a second."""
    _, chat = await chat_as()
    assert await chat.receive_nothing(timeout=1.2)  # the watch has checked twice, and kept it
    alice.is_active = False
    await alice.asave(update_fields=["is_active"])
    assert await close_code(chat, within=1.0) == 4401


async def test_password_change_closes_the_socket(service, alice, chat_as):
    """A password changed elsewhere ends the session, as Django's get_user
    does for HTTP: the open socket closes with 4401 within a second."""
    _, chat = await chat_as()
    alice.set_password("a-new-password-456")
    await alice.asave(update_fields=["password"])
    assert await close_code(chat, within=1.0) == 4401


@pytest.mark.parametrize("how", ["page", "another process"])
async def test_deleting_the_conversation_stops_its_streaming_reply(service, alice, chat_as, how):
    """Deleting a conversation while its reply streams stops the reply within a
    second: it ends with `not_found`, the slot is free, and the person can
    start a new chat at once (no `busy`). From the page (this process) or
    from another process (a plain delete this process only sees in the database)."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    client, chat = await chat_as()
    await chat.send_json_to(send_frame())
    accepted = (await receive_until(chat, "started"))[0]
    if how == "page":
        response = await client.post(f"/api/conversations/{accepted['conversation']}/delete/")
        assert response.status_code == 200
    else:
        await Conversation.objects.filter(pk=accepted["conversation"]).adelete()
    ending, _ = await reply_ending(chat, within=1.0)
    assert (ending["type"], ending["code"], ending["request"]) == ("error", "not_found", accepted["request"])
    assert not any(r.user_id == alice.pk for r in service.running.values())

    await chat.send_json_to(send_frame("a new chat"))
    frames = await receive_until(chat, "started")
    assert frames[0]["type"] == "accepted"
    await chat.send_json_to({"type": "cancel"})
    await receive_until(chat, "done")


@pytest.mark.parametrize("how", ["page", "another process"])
async def test_deleting_the_conversation_while_queued(service, alice, bob, chat_as, connect_as, caplog, how):
    """With one slot held by another user, deleting a waiting request's
    conversation ends it with `not_found`, not `internal`, and logs no error,
    also when the slot frees before the watch notices (another process's
    delete); its statistics record is still written."""
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    holder = await connect_as(bob)
    await holder.send_json_to(send_frame())
    await receive_until(holder, "started")
    client, chat = await chat_as()
    await chat.send_json_to(send_frame())
    accepted = (await receive_until(chat, "queued"))[0]
    if how == "page":
        response = await client.post(f"/api/conversations/{accepted['conversation']}/delete/")
        assert response.status_code == 200
    else:
        await Conversation.objects.filter(pk=accepted["conversation"]).adelete()
        await holder.send_json_to({"type": "cancel"})  # the waiting request starts at once
    ending, _ = await reply_ending(chat, within=1.0)
    assert (ending["type"], ending["code"]) == ("error", "not_found")
    await holder.send_json_to({"type": "cancel"})
    await receive_until(holder, "done")

    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # No reply was started (the page's delete keeps the question for its undo window).
    replies = Message.objects.filter(conversation_id=accepted["conversation"], role=Message.Role.ASSISTANT)
    assert await replies.acount() == 0
    record = await wait_for(
        lambda: GenerationRecord.objects.filter(request_id=accepted["request"]).afirst(), timeout=5
    )
    assert record.conversation_id is None


async def test_the_watch_checks_any_number_of_sockets_with_three_queries(alice, bob):
    """The check's cost does not grow with the sockets: three queries for
    forty sockets of two users with live replies in twenty conversations."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from generation.watch import Watched, judge

    async def never(code):
        raise AssertionError("nothing was revoked")

    conversations = [await Conversation.objects.acreate(owner=alice) for _ in range(20)]
    entries = [
        Watched(
            user_id=user.pk, session_key=f"key{n}", revoke=never, conversation_id=conversations[n % 20].pk
        )
        for n, user in enumerate([alice, bob] * 20)
    ]

    def check():
        with CaptureQueriesContext(connection) as queries:
            verdicts, gone = judge(entries)
        return len(queries), verdicts, gone

    count, verdicts, gone = await database_sync_to_async(check)()
    assert count == 3
    assert set(verdicts.values()) == {4401}  # those session keys do not exist
    assert gone == set()
