"""The /ws/chat/ consumer against the real generation service on the tiny model."""

import json
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from generation import consumers
from generation.models import Conversation, Message
from generation.recovery import SweepOnFirstRequest
from generation.runtime.service import default_worker_name
from generation.runtime.types import ErrorCode
from tests.generation.conftest import TIMEOUT, receive_until
from tests.polling import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def messages_of(conversation_id):
    return list(Message.objects.filter(conversation_id=conversation_id).order_by("created", "id"))


async def stored_status(message_id, status):
    """The stored message if it has `status` now, else None."""
    message = await Message.objects.aget(pk=message_id)
    return message if message.status == status else None


async def receive_until_either(communicator, *kinds: str) -> list[dict]:
    """Frames received up to and including the first of any type in `kinds`."""
    frames = []
    while not frames or frames[-1]["type"] not in kinds:
        frames.append(await communicator.receive_json_from(timeout=TIMEOUT))
    return frames


def send_frame(content="hello", conversation=None):
    return {"type": "send", "conversation": conversation, "content": content}


async def test_full_event_sequence_and_persistence(service, alice, connect_as):
    """A reply goes accepted, started, tokens, done, and is stored once complete."""
    service.update_limits(service.limits.replace(max_new_tokens=8))
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame("hello"))
    frames = await receive_until(chat, "done")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "accepted"
    assert kinds[1] == "started"
    assert kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"token"}
    accepted, started, done = frames[0], frames[1], frames[-1]
    assert {f["request"] for f in frames} == {accepted["request"]}
    assert done["finish_reason"] == "length"
    assert done["message"] == started["message"]
    assert done["usage"]["completion_tokens"] == 8
    assert set(done["timings"]) == {"queue_ms", "ttft_ms", "total_ms"}

    user_message, reply = await messages_of(accepted["conversation"])
    assert (user_message.pk, user_message.role, user_message.content) == (
        accepted["user_message"],
        "user",
        "hello",
    )
    assert reply.pk == started["message"]
    assert reply.status == Message.Status.COMPLETE
    assert reply.content == "".join(f["text"] for f in frames if f["type"] == "token")
    assert reply.completion_tokens == 8
    assert reply.ttft_ms is not None and reply.total_ms is not None
    conversation = await Conversation.objects.aget(pk=accepted["conversation"])
    assert conversation.title == "hello"


async def test_follow_up_continues_the_conversation(service, alice, connect_as):
    """A send with a conversation id adds to it; the model sees the earlier turns."""
    service.update_limits(service.limits.replace(max_new_tokens=4))
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame("hello"))
    first = await receive_until(chat, "done")
    conversation = first[0]["conversation"]
    await chat.send_json_to(send_frame("and again", conversation))
    second = await receive_until(chat, "done")
    assert second[0]["conversation"] == conversation
    assert len(await messages_of(conversation)) == 4


async def test_queue_positions_with_one_slot(service, alice, bob, django_user_model, connect_as):
    """With one slot, the second and third clients see their live queue positions."""
    carol = await django_user_model.objects.acreate(username="carol")
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    first, second, third = [await connect_as(user) for user in (alice, bob, carol)]
    await first.send_json_to(send_frame())
    await receive_until(first, "started")
    await second.send_json_to(send_frame())
    frames = await receive_until(second, "queued")
    assert (frames[-1]["position"], frames[-1]["waiting"]) == (1, 1)
    await third.send_json_to(send_frame())
    frames = await receive_until(third, "queued")
    third_question = frames[0]["user_message"]
    assert (frames[-1]["position"], frames[-1]["waiting"]) == (2, 2)
    assert (await second.receive_json_from(TIMEOUT))["waiting"] == 2

    # The first stops: the second starts, the third moves up.
    await first.send_json_to({"type": "cancel"})
    assert (await receive_until(first, "done"))[-1]["finish_reason"] == "cancelled"
    await receive_until(second, "started")
    frame = await third.receive_json_from(TIMEOUT)
    assert (frame["type"], frame["position"], frame["waiting"]) == ("queued", 1, 1)

    # Cancelling while queued leaves the queue at once, with no reply stored;
    # the question is kept, marked cancelled.
    await third.send_json_to({"type": "cancel"})
    done = (await receive_until(third, "done"))[-1]
    assert (done["finish_reason"], done["message"]) == ("cancelled", None)
    assert (await Message.objects.aget(pk=third_question)).status == Message.Status.CANCELLED
    await second.send_json_to({"type": "cancel"})
    await receive_until(second, "done")


async def test_cancel_saves_partial_reply(service, alice, connect_as):
    """Cancel stops a running reply; what was sent is stored as cancelled."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame())
    frames = await receive_until(chat, "token")
    await chat.send_json_to({"type": "cancel"})
    frames += await receive_until(chat, "done")
    assert frames[-1]["finish_reason"] == "cancelled"
    assert frames[-1]["usage"]["completion_tokens"] < 4000
    reply = await Message.objects.aget(pk=frames[-1]["message"])
    assert reply.status == Message.Status.CANCELLED
    assert reply.content == "".join(f["text"] for f in frames if f["type"] == "token")
    assert reply.content


async def test_a_reply_nobody_comes_back_for_is_cancelled_after_the_grace(
    service, alice, bob, connect_as, settings
):
    """Closing the socket keeps the reply for the re-attach grace; nobody comes
    back, so it is stopped and the next waiting request starts."""
    settings.GENERATION_REATTACH_GRACE_S = 0.5
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    first, second = await connect_as(alice), await connect_as(bob)
    await first.send_json_to(send_frame())
    started = (await receive_until(first, "started"))[-1]
    await second.send_json_to(send_frame())
    await receive_until(second, "queued")
    closed_at = time.monotonic()
    await first.disconnect(timeout=TIMEOUT)
    assert any(r.user_id == alice.pk for r in service.running.values())  # kept for now
    await receive_until(second, "started")
    assert time.monotonic() - closed_at >= 0.5
    assert not any(r.user_id == alice.pk for r in service.running.values())
    reply = await Message.objects.aget(pk=started["message"])
    assert reply.status == Message.Status.CANCELLED


async def test_second_send_while_replying_is_busy(service, alice, connect_as):
    """One reply at a time per socket; the extra message is refused, not stored."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame())
    accepted = (await receive_until(chat, "started"))[0]
    await chat.send_json_to(send_frame("another", accepted["conversation"]))
    error = await receive_until(chat, "error")
    assert (error[-1]["code"], error[-1]["request"]) == ("busy", None)
    assert len(await messages_of(accepted["conversation"])) == 2  # question and reply
    await chat.send_json_to({"type": "cancel"})
    await receive_until(chat, "done")


async def test_busy_from_another_tab_is_stored_as_failed(service, alice, connect_as):
    """A second tab of the same user gets `busy`; its message is kept, marked failed."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    tab1, tab2 = await connect_as(alice), await connect_as(alice)
    await tab1.send_json_to(send_frame())
    await receive_until(tab1, "started")
    await tab2.send_json_to(send_frame("second tab"))
    frames = await receive_until(tab2, "error")
    assert frames[0]["type"] == "accepted"
    assert frames[-1]["code"] == "busy"
    message = await Message.objects.aget(pk=frames[0]["user_message"])
    assert (message.status, message.error_code, message.content) == ("error", "busy", "second tab")
    await tab1.send_json_to({"type": "cancel"})
    await receive_until(tab1, "done")


MALFORMED = [
    "not json",
    "",
    "[1, 2]",
    '"send"',
    "{}",
    '{"type": "shout"}',
    '{"type": "send", "conversation": null}',
    '{"type": "send", "conversation": null, "content": 5}',
    '{"type": "send", "conversation": "1", "content": "hi"}',
    '{"type": "send", "conversation": true, "content": "hi"}',
    '{"type": "send", "conversation": 1.5, "content": "hi"}',
    '{"type": "send", "conversation": null, "content": ""}',
    '{"type": "send", "conversation": null, "content": "  \\n "}',
    json.dumps(send_frame("x" * 8001)),
    json.dumps(send_frame("before\x00after")),
    json.dumps(send_frame("lone \ud800 surrogate")),
    '{"type": "send", "conversation": null, "content": "\\udfff"}',
    json.dumps(send_frame("\U0001f600" * 8001)),
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
]


async def test_malformed_frames_get_invalid_and_socket_stays_usable(service, alice, connect_as, monkeypatch):
    """Every malformed frame gets an `invalid` error; the socket keeps working."""
    # More frames than the rate limit's burst; the limit has its own test.
    monkeypatch.setattr(consumers, "FRAME_BURST", len(MALFORMED) + 10)
    service.update_limits(service.limits.replace(max_new_tokens=2))
    chat = await connect_as(alice)
    for text in MALFORMED:
        await chat.send_input({"type": "websocket.receive", "text": text})
        frame = await chat.receive_json_from(TIMEOUT)
        assert (frame["type"], frame["code"], frame["request"]) == ("error", "invalid", None), text[:60]
        assert frame["message"]
    await chat.send_to(bytes_data=b'{"type": "cancel"}')
    assert (await chat.receive_json_from(TIMEOUT))["code"] == "invalid"
    assert await Message.objects.acount() == 0
    await chat.send_json_to(send_frame())
    assert (await receive_until(chat, "done"))[0]["type"] == "accepted"


async def test_a_message_at_the_limit_is_stored_exactly_however_it_is_escaped(service, alice, connect_as):
    """CHAT_MAX_MESSAGE_CHARS counts code points: 8,000 emoji, sent as escaped
    JSON (12 characters each), pass the frame guard and are stored exactly,
    as is text with RTL, zero-width and control characters; one emoji more
    is refused for its length, not as a too-large frame."""
    service.update_limits(service.limits.replace(max_new_tokens=1))
    chat = await connect_as(alice)
    for content in [
        "\U0001f600" * 8000,
        "\u202etxt.exe\u202c \u200b\u200d \x1b[1m\t\n\u05e9\u05dc\u05d5\u05dd",
    ]:
        await chat.send_to(json.dumps(send_frame(content)))  # ensure_ascii: every emoji is "\ud83d\ude00"
        frames = [await chat.receive_json_from(TIMEOUT)]
        assert frames[0]["type"] == "accepted", frames[0]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(await chat.receive_json_from(TIMEOUT))
        stored = await Message.objects.aget(pk=frames[0]["user_message"])
        assert stored.content == content
    await chat.send_to(json.dumps(send_frame("\U0001f600" * 8001)))
    refused = await chat.receive_json_from(TIMEOUT)
    assert refused["code"] == "invalid"
    assert refused["message"] == "The message is longer than 8000 characters. Please shorten it."
    await chat.send_json_to(send_frame("hi", conversation=10**30))
    assert (await chat.receive_json_from(TIMEOUT))["code"] == "not_found"


async def test_message_limit_is_a_setting(service, alice, connect_as, settings):
    """CHAT_MAX_MESSAGE_CHARS bounds the content length."""
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame("x" * 11))
    assert (await chat.receive_json_from(TIMEOUT))["code"] == "invalid"


async def test_other_users_conversation_is_not_found(service, alice, bob, connect_as):
    """A conversation id of another user is `not_found`, and nothing is written to it."""
    conversation = await Conversation.objects.acreate(owner=bob, title="bob's secret")
    chat = await connect_as(alice)
    for conversation_id in (conversation.pk, 999_999):
        await chat.send_json_to(send_frame("peek", conversation_id))
        frame = await chat.receive_json_from(TIMEOUT)
        assert (frame["type"], frame["code"], frame["request"]) == ("error", "not_found", None)
        assert "secret" not in json.dumps(frame)
    assert await Message.objects.acount() == 0


async def test_unauthenticated_socket_is_closed_with_4401():
    """The real ASGI stack closes a socket without a session with code 4401."""
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]
    )
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    assert await communicator.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect(timeout=TIMEOUT)


async def test_first_request_marks_a_dead_predecessors_replies_interrupted(alice):
    """The first request a process serves marks replies its crashed
    predecessor (same worker name) left generating as interrupted; another
    live process's reply is left alone."""
    conversation = await Conversation.objects.acreate(owner=alice, title="t")
    orphan = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="generating", worker=default_worker_name()
    )
    other = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="generating", worker="another-live-process"
    )
    fresh_process = SweepOnFirstRequest(application.application)
    communicator = WebsocketCommunicator(
        fresh_process, "/ws/chat/", headers=[(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]
    )
    await communicator.connect(timeout=TIMEOUT)
    await communicator.disconnect(timeout=TIMEOUT)
    await orphan.arefresh_from_db()
    await other.arefresh_from_db()
    assert orphan.status == Message.Status.INTERRUPTED
    assert other.status == Message.Status.GENERATING


async def test_a_send_refused_by_a_closing_socket_still_saves_the_request(
    service, alice, bob, django_user_model, connect_as, monkeypatch, settings
):
    """A client can close between a frame's check and its send; the server then
    refuses the send (fault injected here). The request must still end, freeing
    its place, and be stored as cancelled once the disconnect arrives (with
    no re-attach grace, as GENERATION_REATTACH_GRACE_S=0 sets)."""
    settings.GENERATION_REATTACH_GRACE_S = 0
    carol = await django_user_model.objects.acreate(username="carol")
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    first, second, third = [await connect_as(user) for user in (alice, carol, bob)]
    await first.send_json_to(send_frame())
    await receive_until(first, "started")
    await second.send_json_to(send_frame())
    await receive_until(second, "queued")
    await third.send_json_to(send_frame())
    question = (await receive_until(third, "queued"))[0]["user_message"]

    refused = []
    original = consumers.ChatConsumer.send_json

    async def refuse_for_bob(self, content, close=False):
        if self.user.pk == bob.pk and content["type"] == "queued":
            refused.append(content)
            raise ConnectionError("send on a closed socket")
        return await original(self, content, close)

    monkeypatch.setattr(consumers.ChatConsumer, "send_json", refuse_for_bob)
    await second.send_json_to({"type": "cancel"})  # bob moves up: his position frame is refused
    await receive_until(second, "done")
    await third.disconnect(timeout=TIMEOUT)
    assert refused
    message = await Message.objects.aget(pk=question)
    assert message.status == Message.Status.CANCELLED
    assert not any(request.user_id == bob.pk for request in [*service.queue, *service.running.values()])
    await first.send_json_to({"type": "cancel"})
    await receive_until(first, "done")


async def test_a_dropped_app_leaves_an_orphan_that_a_new_message_stops(service, alice, connect_as):
    """Daphne cancels an app that is still busy 10 s after its client left
    (application_close_timeout), so `disconnect` never runs. The reply waits
    for its page like any other, and the same person can chat again at once:
    the new message stops the orphan, stored as cancelled, instead of `busy`."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame())
    started = (await receive_until(chat, "started"))[-1]
    chat.future.cancel()  # what daphne's application_checker does

    again = await connect_as(alice)
    await again.send_json_to(send_frame("still there?"))
    assert (await receive_until_either(again, "started", "error"))[-1]["type"] == "started"
    reply = await wait_for(lambda: stored_status(started["message"], "cancelled"), timeout=3)
    assert reply.completion_tokens < 4000
    await again.send_json_to({"type": "cancel"})
    await receive_until(again, "done")


async def test_a_failed_send_lets_go_of_the_reply(service, alice, connect_as, monkeypatch, settings):
    """A send the server refuses means the reader is gone (fault injected
    here; some servers raise on a closed socket); the reply's grace starts
    then, without waiting for a disconnect that may come late or never."""
    settings.GENERATION_REATTACH_GRACE_S = 0.2
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    original = consumers.ChatConsumer.send_json

    async def refuse_tokens(self, content, close=False):
        if content["type"] == "token":
            raise ConnectionError("send on a closed socket")
        return await original(self, content, close)

    monkeypatch.setattr(consumers.ChatConsumer, "send_json", refuse_tokens)
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame())
    started = (await receive_until(chat, "started"))[-1]

    reply = await wait_for(lambda: stored_status(started["message"], "cancelled"), timeout=3)
    assert reply.completion_tokens < 4000
    assert not any(r.user_id == alice.pk for r in service.running.values())


async def test_a_frame_flood_is_dropped_with_one_notice_and_cancel_still_works(service, alice, connect_as):
    """A socket may not queue unbounded work: frames over the rate limit are
    dropped with at most one `invalid` notice per second, and a `cancel` sent
    in the flood is still honoured."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame())
    await receive_until(chat, "started")
    began = time.monotonic()
    for _ in range(2000):
        await chat.send_input({"type": "websocket.receive", "text": "{}"})
    await chat.send_json_to({"type": "cancel"})
    frames = await receive_until(chat, "done")
    elapsed = time.monotonic() - began
    assert frames[-1]["finish_reason"] == "cancelled"
    errors = [frame for frame in frames if frame["type"] == "error"]
    assert all(error["code"] == "invalid" for error in errors)
    # The burst's own errors, those of frames let through as the bucket
    # refills, and one notice to slow down a second: never one per frame.
    allowed = consumers.FRAME_BURST + (consumers.FRAME_RATE_PER_S + 1) * (elapsed + 1)
    assert len(errors) <= allowed, (len(errors), elapsed)
    assert any("slow down" in error["message"] for error in errors)


async def test_a_model_that_cannot_load_is_unavailable_without_its_server_path(
    alice, connect_as, settings, tmp_path
):
    """The chat gets `unavailable` in plain words, not a generic internal
    error; the service's own sentence, which names a server path, stays with
    staff (the console); the question is marked."""
    from generation.runtime.registry import get_service

    settings.GENERATION_MODEL = str(tmp_path / "no-such-model")
    chat = await connect_as(alice)
    try:
        await chat.send_json_to(send_frame("hello"))
        frames = await receive_until(chat, "error")
        error = frames[-1]
        assert error["code"] == "unavailable"
        assert error["message"] == ErrorCode.UNAVAILABLE.text
        assert "no-such-model" not in error["message"]
        assert "no-such-model" in get_service().status()["model"]["error"]
        question = await Message.objects.aget(pk=frames[0]["user_message"])
        assert question.error_code == "unavailable"
    finally:
        get_service().stop()
