"""Ask again, fix a question: `regenerate` and `edit` over /ws/chat/, what is
stored, what the page loads, and what the model is given."""

import pytest
from django.test import AsyncClient

from generation.models import Message
from tests.generation.conftest import TIMEOUT, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


def send_frame(content="hello", conversation=None):
    return {"type": "send", "conversation": conversation, "content": content}


async def exchange(chat, frame) -> list[dict]:
    """Send `frame` and return its frames up to `done`."""
    await chat.send_json_to(frame)
    return await receive_until(chat, "done")


async def all_messages(conversation_id) -> list[tuple[str, str, bool]]:
    return [
        (m.role, m.content, m.superseded)
        async for m in Message.objects.filter(conversation_id=conversation_id).order_by("created", "id")
    ]


async def page_load(user, conversation_id) -> list[dict]:
    """The messages the page gets when it loads the conversation."""
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(f"/api/conversations/{conversation_id}/")
    assert response.status_code == 200
    return response.json()["messages"]


async def history_given_to_model(service, request_id) -> list[dict]:
    """The messages of a request that is running now."""
    return service.running[request_id].messages


async def test_regenerate_keeps_the_old_reply_superseded_and_shows_the_new(service, alice, connect_as):
    """Regenerate answers the same question again: the old reply stays in the
    database, superseded; the page loads the newest only, and the model's next
    history holds the newest reply."""
    service.update_limits(service.limits.replace(max_new_tokens=4))
    chat = await connect_as(alice)
    first = await exchange(chat, send_frame("hello"))
    conversation, question, old_reply = (
        first[0]["conversation"],
        first[0]["user_message"],
        first[-1]["message"],
    )

    again = await exchange(chat, {"type": "regenerate", "conversation": conversation, "message": old_reply})
    assert (again[0]["type"], again[0]["user_message"], again[0]["conversation"]) == (
        "accepted",
        question,
        conversation,
    )
    new_reply = again[-1]["message"]
    assert new_reply not in (None, old_reply)
    stored = await all_messages(conversation)
    assert [(role, superseded) for role, _, superseded in stored] == [
        ("user", False),
        ("assistant", True),
        ("assistant", False),
    ]
    loaded = await page_load(alice, conversation)
    assert [m["id"] for m in loaded] == [question, new_reply]

    service.update_limits(service.limits.replace(max_new_tokens=4000))
    await chat.send_json_to(send_frame("and then?", conversation))
    started = (await receive_until(chat, "started"))[0]
    newest = (await Message.objects.aget(pk=new_reply)).content
    assert await history_given_to_model(service, started["request"]) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": newest},
        {"role": "user", "content": "and then?"},
    ]
    await chat.send_json_to({"type": "cancel"})
    await receive_until(chat, "done")


async def test_edit_stores_a_new_question_and_reply_and_keeps_the_old_pair(service, alice, connect_as):
    """Edit the last question: a new question and a new reply; the old pair
    stays, superseded; the model sees only the edited question."""
    service.update_limits(service.limits.replace(max_new_tokens=4))
    chat = await connect_as(alice)
    opening = await exchange(chat, send_frame("first"))
    conversation = opening[0]["conversation"]
    opening_reply = (await Message.objects.aget(pk=opening[-1]["message"])).content
    first = await exchange(chat, send_frame("typo hre", conversation))
    question = first[0]["user_message"]

    service.update_limits(service.limits.replace(max_new_tokens=4000))
    await chat.send_json_to(
        {"type": "edit", "conversation": conversation, "message": question, "content": "typo here 日本語 👍"}
    )
    frames = await receive_until(chat, "started")
    new_question = frames[0]["user_message"]
    assert new_question != question
    history = await history_given_to_model(service, frames[0]["request"])
    assert history == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": opening_reply},
        {"role": "user", "content": "typo here 日本語 👍"},
    ]
    await chat.send_json_to({"type": "cancel"})
    done = (await receive_until(chat, "done"))[-1]

    assert await all_messages(conversation) == [
        ("user", "first", False),
        ("assistant", opening_reply, False),
        ("user", "typo hre", True),
        ("assistant", (await Message.objects.aget(pk=first[-1]["message"])).content, True),
        ("user", "typo here 日本語 👍", False),
        ("assistant", (await Message.objects.aget(pk=done["message"])).content, False),
    ]
    assert [m["id"] for m in await page_load(alice, conversation)] == [
        opening[0]["user_message"],
        opening[-1]["message"],
        new_question,
        done["message"],
    ]


async def test_only_the_last_turn_can_be_regenerated_or_edited(service, alice, connect_as):
    """An earlier reply or question, or a stale id, gets `not_last` and
    changes nothing; the socket stays usable."""
    service.update_limits(service.limits.replace(max_new_tokens=4))
    chat = await connect_as(alice)
    first = await exchange(chat, send_frame("one"))
    conversation = first[0]["conversation"]
    second = await exchange(chat, send_frame("two", conversation))
    before = await all_messages(conversation)
    for frame in (
        {"type": "regenerate", "conversation": conversation, "message": first[-1]["message"]},
        {"type": "regenerate", "conversation": conversation, "message": second[0]["user_message"]},
        {"type": "edit", "conversation": conversation, "message": first[0]["user_message"], "content": "x"},
        {"type": "edit", "conversation": conversation, "message": second[-1]["message"], "content": "x"},
    ):
        await chat.send_json_to(frame)
        error = await chat.receive_json_from(TIMEOUT)
        assert (error["type"], error["code"], error["request"]) == ("error", "not_last", None), frame
        assert "last" in error["message"]
    assert await all_messages(conversation) == before
    again = await exchange(
        chat, {"type": "regenerate", "conversation": conversation, "message": second[-1]["message"]}
    )
    assert again[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("content", "why"),
    [("   ", "empty"), ("a\x00b", "NUL"), ("x" * 8001, "8000"), ("\ud800", "surrogate")],
)
async def test_an_edit_is_checked_like_a_new_message(service, alice, connect_as, content, why):
    """Edited text follows the same rules as a new message: refused with
    `invalid` and a reason, nothing stored."""
    service.update_limits(service.limits.replace(max_new_tokens=4))
    chat = await connect_as(alice)
    first = await exchange(chat, send_frame("hello"))
    conversation = first[0]["conversation"]
    before = await all_messages(conversation)
    await chat.send_json_to(
        {
            "type": "edit",
            "conversation": conversation,
            "message": first[0]["user_message"],
            "content": content,
        }
    )
    error = await chat.receive_json_from(TIMEOUT)
    assert (error["type"], error["code"]) == ("error", "invalid")
    assert await all_messages(conversation) == before


async def test_nobody_can_regenerate_or_edit_another_persons_conversation(service, alice, bob, connect_as):
    """Another person's conversation is `not_found`, as an unknown one, and
    nothing of it changes."""
    service.update_limits(service.limits.replace(max_new_tokens=4))
    mine = await connect_as(alice)
    first = await exchange(mine, send_frame("private"))
    conversation = first[0]["conversation"]
    before = await all_messages(conversation)
    theirs = await connect_as(bob)
    for frame in (
        {"type": "regenerate", "conversation": conversation, "message": first[-1]["message"]},
        {
            "type": "edit",
            "conversation": conversation,
            "message": first[0]["user_message"],
            "content": "mine now",
        },
    ):
        await theirs.send_json_to(frame)
        error = await theirs.receive_json_from(TIMEOUT)
        assert (error["type"], error["code"], error["request"]) == ("error", "not_found", None)
    assert await all_messages(conversation) == before


async def test_a_reply_still_being_written_cannot_be_regenerated(service, alice, connect_as):
    """While the last reply streams, regenerate is `busy`, from its own tab
    and from another; after Stop it works, and a question stopped before its
    reply began can be asked again too."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    chat = await connect_as(alice)
    await chat.send_json_to(send_frame())
    accepted, started = (await receive_until(chat, "started"))[:2]
    frame = {"type": "regenerate", "conversation": accepted["conversation"], "message": started["message"]}
    other = await connect_as(alice)
    for socket in (chat, other):
        await socket.send_json_to(frame)
        assert (await receive_until(socket, "error"))[-1]["code"] == "busy"
    await chat.send_json_to({"type": "cancel"})
    await receive_until(chat, "done")

    await chat.send_json_to(frame)
    await receive_until(chat, "token")
    await chat.send_json_to({"type": "cancel"})
    assert (await receive_until(chat, "done"))[-1]["finish_reason"] == "cancelled"
