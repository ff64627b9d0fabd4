"""A reply survives a reload: the page comes back (`open`) within the grace and
re-attaches; its text so far is saved every few seconds; nobody else attaches."""

import pytest

from generation import replies
from generation.models import Message
from tests.generation.conftest import TIMEOUT, receive_until
from tests.polling import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def send_frame(content="hello", conversation=None):
    return {"type": "send", "conversation": conversation, "content": content}


def text_of(frames: list[dict]) -> str:
    return "".join(frame["text"] for frame in frames if frame["type"] == "token")


async def test_a_reloaded_page_gets_the_text_so_far_and_the_rest_live(service, alice, connect_as):
    """Reloading mid-reply: the new socket opens the conversation and gets the
    same reply, its text so far, then the rest; Stop still stops it, and the
    stored reply is all of it."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    page = await connect_as(alice)
    await page.send_json_to(send_frame())
    frames = await receive_until(page, "token")
    accepted, started = frames[0], frames[1]
    await page.disconnect(timeout=TIMEOUT)

    reloaded = await connect_as(alice)
    await reloaded.send_json_to({"type": "open", "conversation": accepted["conversation"]})
    attached = await reloaded.receive_json_from(TIMEOUT)
    assert attached["type"] == "attached"
    assert (attached["request"], attached["message"], attached["user_message"]) == (
        accepted["request"],
        started["message"],
        accepted["user_message"],
    )
    assert attached["text"].startswith(text_of(frames))  # it went on meanwhile
    assert attached["position"] is None
    more = await receive_until(reloaded, "token")
    await reloaded.send_json_to({"type": "cancel"})
    more += await receive_until(reloaded, "done")
    assert more[-1]["finish_reason"] == "cancelled"
    reply = await Message.objects.aget(pk=started["message"])
    assert reply.status == Message.Status.CANCELLED
    assert reply.content == attached["text"] + text_of(more)


async def test_a_reloaded_page_sees_its_live_queue_position(service, alice, bob, connect_as):
    """Reloading while queued keeps the place: the new page is told its
    position, then that the reply started."""
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    other, page = await connect_as(bob), await connect_as(alice)
    await other.send_json_to(send_frame())
    await receive_until(other, "started")
    await page.send_json_to(send_frame("me next"))
    accepted = (await receive_until(page, "queued"))[0]
    await page.disconnect(timeout=TIMEOUT)

    reloaded = await connect_as(alice)
    await reloaded.send_json_to({"type": "open", "conversation": accepted["conversation"]})
    attached = await reloaded.receive_json_from(TIMEOUT)
    assert (attached["type"], attached["message"], attached["text"]) == ("attached", None, "")
    assert (attached["position"], attached["waiting"]) == (1, 1)
    await other.send_json_to({"type": "cancel"})
    started = (await receive_until(reloaded, "started"))[-1]
    assert started["request"] == accepted["request"]
    await reloaded.send_json_to({"type": "cancel"})
    await receive_until(reloaded, "done")


async def test_open_with_nothing_live_is_idle_and_others_cannot_attach(service, alice, bob, connect_as):
    """`open` of a conversation with no live reply answers `idle`; another
    person's conversation, live or not, is `not_found`, and their socket gets
    none of its frames."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    page = await connect_as(alice)
    await page.send_json_to(send_frame())
    accepted = (await receive_until(page, "started"))[0]
    intruder = await connect_as(bob)
    await intruder.send_json_to({"type": "open", "conversation": accepted["conversation"]})
    error = await intruder.receive_json_from(TIMEOUT)
    assert (error["type"], error["code"], error["request"]) == ("error", "not_found", None)
    await page.send_json_to({"type": "cancel"})
    await receive_until(page, "done")
    assert await intruder.receive_nothing(0.2)

    await page.send_json_to({"type": "open", "conversation": accepted["conversation"]})
    assert await page.receive_json_from(TIMEOUT) == {"type": "idle", "conversation": accepted["conversation"]}


async def test_two_tabs_see_the_same_reply(service, alice, connect_as):
    """A second tab that opens the conversation while the first still shows
    the reply gets it too; both get its end."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    first = await connect_as(alice)
    await first.send_json_to(send_frame())
    accepted = (await receive_until(first, "token"))[0]
    second = await connect_as(alice)
    await second.send_json_to({"type": "open", "conversation": accepted["conversation"]})
    assert (await second.receive_json_from(TIMEOUT))["type"] == "attached"
    await second.send_json_to({"type": "cancel"})
    assert (await receive_until(first, "done"))[-1]["finish_reason"] == "cancelled"
    assert (await receive_until(second, "done"))[-1]["finish_reason"] == "cancelled"


async def test_a_new_message_elsewhere_stops_the_orphan_instead_of_busy(service, alice, connect_as):
    """Closing the tab and writing in another within the grace: the new
    message is answered (not `busy`) and the orphan is stored cancelled."""
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    page = await connect_as(alice)
    await page.send_json_to(send_frame())
    started = (await receive_until(page, "started"))[-1]
    await page.disconnect(timeout=TIMEOUT)
    other = await connect_as(alice)
    await other.send_json_to(send_frame("something else"))
    assert (await receive_until(other, "started"))[0]["type"] == "accepted"
    assert (await Message.objects.aget(pk=started["message"])).status == Message.Status.CANCELLED
    await other.send_json_to({"type": "cancel"})
    await receive_until(other, "done")


async def test_the_text_so_far_is_saved_every_few_seconds(service, alice, connect_as, monkeypatch):
    """While a reply streams, its row holds the text so far (a crash loses
    only the last interval), saved in batches, not once per token."""
    monkeypatch.setattr(replies, "PARTIAL_SAVE_INTERVAL_S", 0.3)
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    page = await connect_as(alice)
    await page.send_json_to(send_frame())
    started = (await receive_until(page, "started"))[-1]

    async def saved_while_generating():
        row = await Message.objects.aget(pk=started["message"])
        return row if row.status == Message.Status.GENERATING and row.content else None

    row = await wait_for(saved_while_generating, timeout=5)
    await page.send_json_to({"type": "cancel"})
    frames = await receive_until(page, "done")
    final = await Message.objects.aget(pk=started["message"])
    assert final.content.startswith(row.content) and len(final.content) > len(row.content)
    assert frames[-1]["usage"]["completion_tokens"] > 1


async def test_a_reply_is_interrupted_with_its_text_so_far_when_the_process_stops(
    service, alice, connect_as, monkeypatch
):
    """The process stopping mid-reply (its task cancelled, as on shutdown)
    stores the reply as interrupted with what it had, never empty."""
    monkeypatch.setattr(replies, "PARTIAL_SAVE_INTERVAL_S", 0.1)
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    page = await connect_as(alice)
    await page.send_json_to(send_frame())
    accepted, started = (await receive_until(page, "token"))[:2]
    reply = replies.find(user_id=alice.pk, conversation_id=accepted["conversation"])
    reply.task.cancel()
    row = await wait_for(lambda: _stored(started["message"], Message.Status.INTERRUPTED), timeout=TIMEOUT)
    assert row.content
    service.cancel(reply.handle.id)


async def _stored(message_id, status):
    row = await Message.objects.aget(pk=message_id)
    return row if row.status == status else None


async def test_a_queued_request_nobody_comes_back_for_leaves_the_queue_marked(
    service, alice, bob, connect_as, settings
):
    """Closing the page while queued: after the grace the request leaves the
    queue and its question is stored cancelled (shown unanswered, with Retry),
    never left without a status."""
    settings.GENERATION_REATTACH_GRACE_S = 0.3
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    other, page = await connect_as(bob), await connect_as(alice)
    await other.send_json_to(send_frame())
    await receive_until(other, "started")
    await page.send_json_to(send_frame("me next"))
    question = (await receive_until(page, "queued"))[0]["user_message"]
    await page.disconnect(timeout=TIMEOUT)
    assert any(r.user_id == alice.pk for r in service.queue)  # its place is kept for now
    row = await wait_for(lambda: _stored(question, Message.Status.CANCELLED), timeout=3)
    assert row.error_code == ""
    assert not any(r.user_id == alice.pk for r in service.queue)
    await other.send_json_to({"type": "cancel"})
    await receive_until(other, "done")
