"""Services and selectors of the chat, against the database."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import selectors, services, text
from generation.models import Conversation, Message
from generation.runtime.types import Timings, Usage

pytestmark = pytest.mark.django_db


def add(conversation, role, content, status=Message.Status.COMPLETE):
    return Message.objects.create(conversation=conversation, role=role, content=content, status=status)


def test_user_message_create_starts_a_titled_conversation(alice):
    """A first message creates the conversation, titled from the message."""
    message, history = services.user_message_create(
        owner=alice, conversation_id=None, content="Hello  there\nfriend"
    )
    assert message.conversation.owner == alice
    assert message.conversation.title == "Hello there friend"
    assert history == [{"role": "user", "content": "Hello  there\nfriend"}]


def test_long_titles_are_cut_at_a_word():
    """Titles stay short enough for the sidebar."""
    title = services.title_from_text("word " * 40)
    assert len(title) <= services.TITLE_CHARS + 1
    assert title.endswith("word…")


def test_user_message_create_refuses_other_users_conversation(alice, bob):
    """Another user's conversation is indistinguishable from a missing one."""
    conversation = services.conversation_create(owner=bob, title="bob")
    with pytest.raises(Conversation.DoesNotExist):
        services.user_message_create(owner=alice, conversation_id=conversation.pk, content="hi")
    assert not conversation.messages.exists()


def test_history_skips_failed_and_empty_turns(alice):
    """The model sees complete turns; failed questions and empty replies are left out."""
    conversation = services.conversation_create(owner=alice)
    add(conversation, "user", "first")
    add(conversation, "assistant", "answer one")
    add(conversation, "user", "rejected", Message.Status.ERROR)
    add(conversation, "user", "unanswered")
    add(conversation, "assistant", "", Message.Status.INTERRUPTED)
    add(conversation, "user", "stopped")
    add(conversation, "assistant", "partial", Message.Status.CANCELLED)
    add(conversation, "user", "broken")
    add(conversation, "assistant", "half", Message.Status.ERROR)
    add(conversation, "user", "newest")
    assert selectors.conversation_history_for_model(conversation=conversation) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "stopped"},
        {"role": "assistant", "content": "partial"},
        {"role": "user", "content": "newest"},
    ]


def test_superseded_turns_are_kept_but_neither_shown_nor_given_to_the_model(alice):
    """A regenerated reply and an edited question stay stored; the page's
    list and the model's history skip them."""
    conversation = services.conversation_create(owner=alice)
    add(conversation, "user", "first")
    old = add(conversation, "assistant", "old answer")
    question, history = services.reply_regenerate(
        owner=alice, conversation_id=conversation.pk, message_id=old.pk
    )
    assert question.content == "first" and history == [{"role": "user", "content": "first"}]
    add(conversation, "assistant", "new answer")
    edited, history = services.user_message_edit(
        owner=alice, conversation_id=conversation.pk, message_id=question.pk, content="first, fixed"
    )
    assert history == [{"role": "user", "content": "first, fixed"}]
    assert list(selectors.message_list(conversation=conversation)) == [edited]
    assert conversation.messages.count() == 4  # nothing deleted
    with pytest.raises(services.NotLastTurn):
        services.reply_regenerate(owner=alice, conversation_id=conversation.pk, message_id=old.pk)


def test_a_question_stopped_before_its_reply_can_be_asked_again(alice):
    """Regenerate naming a last question that has no reply (stopped while
    queued) asks it again: it is no longer marked cancelled."""
    conversation = services.conversation_create(owner=alice)
    stopped = add(conversation, "user", "are you there?", Message.Status.CANCELLED)
    question, history = services.reply_regenerate(
        owner=alice, conversation_id=conversation.pk, message_id=stopped.pk
    )
    assert (question.pk, question.status) == (stopped.pk, Message.Status.COMPLETE)
    assert Message.objects.get(pk=stopped.pk).status == Message.Status.COMPLETE
    assert history == [{"role": "user", "content": "are you there?"}]


def test_a_partial_save_never_overwrites_a_finished_reply(alice):
    """The text so far is written while the reply is generating; once it has
    ended, a late partial save changes nothing."""
    conversation = services.conversation_create(owner=alice)
    reply = services.assistant_message_start(conversation_id=conversation.pk, request_id="r1")
    services.assistant_message_save_partial(message_id=reply.pk, content="so far")
    assert Message.objects.get(pk=reply.pk).content == "so far"
    services.assistant_message_finish(message_id=reply.pk, content="so far, and more", status="complete")
    services.assistant_message_save_partial(message_id=reply.pk, content="so far")
    assert Message.objects.get(pk=reply.pk).content == "so far, and more"


def test_assistant_message_is_written_once_at_the_end(alice):
    """A reply starts empty and generating, and ends with its text, counts and timings."""
    conversation = services.conversation_create(owner=alice)
    reply = services.assistant_message_start(conversation_id=conversation.pk, request_id="r1")
    assert (reply.status, reply.content) == ("generating", "")
    services.assistant_message_finish(
        message_id=reply.pk,
        content="done text",
        status=Message.Status.COMPLETE,
        finish_reason="stop",
        usage=Usage(prompt_tokens=5, completion_tokens=2),
        timings=Timings(queue_ms=1, ttft_ms=3, total_ms=9),
    )
    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.completion_tokens, reply.ttft_ms) == (
        "complete",
        "done text",
        2,
        3,
    )


def test_messages_mark_interrupted_only_touches_dead_workers_older_replies(alice):
    """Only replies generating before the cut-off, of a worker judged dead,
    are marked interrupted."""
    conversation = services.conversation_create(owner=alice)

    def start(request_id, worker):
        return services.assistant_message_start(
            conversation_id=conversation.pk, request_id=request_id, worker=worker
        )

    dead = start("dead", "gone")
    alive = start("alive", "running")
    finished = add(conversation, "assistant", "ok")
    cutoff = timezone.now()
    new = start("new", "gone")
    Message.objects.filter(pk=new.pk).update(created=cutoff + timedelta(seconds=1))
    assert services.messages_mark_interrupted(before=cutoff, is_dead=lambda worker: worker == "gone") == 1
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {
        dead.pk: "interrupted",
        alive.pk: "generating",
        finished.pk: "complete",
        new.pk: "generating",
    }


def test_rename_and_delete(alice):
    """Rename trims whitespace; delete hides the conversation at once, and
    the purge after the undo window removes the messages too."""
    conversation = services.conversation_create(owner=alice)
    add(conversation, "user", "hi")
    services.conversation_rename(conversation=conversation, title="  New   name ")
    assert Conversation.objects.get().title == "New name"
    services.conversation_delete(conversation=conversation)
    assert not Conversation.objects.exists()
    services.conversations_purge(before=timezone.now() + timedelta(seconds=1))
    assert not Message.objects.exists()


FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one grapheme, 7 code points


def test_titles_are_never_cut_inside_a_grapheme(alice):
    """A long first message without spaces is titled with whole characters as a
    person sees them: no half family emoji, no letter without its accent."""
    message, _ = services.user_message_create(owner=alice, conversation_id=None, content=FAMILY * 20)
    assert message.conversation.title == FAMILY * 8 + "…"
    assert services.title_from_text("x" + "e\u0301" * 40) == "x" + "e\u0301" * 29 + "…"


def test_rename_refuses_untrusted_text_and_keeps_the_old_title(alice):
    """A title that cannot be stored (NUL, lone surrogate) or is too long is
    refused with a reason; nothing is saved."""
    conversation = services.conversation_create(owner=alice, title="old")
    for title in ("a\x00b", "a\udc80b", "x" * 201):
        with pytest.raises(text.TextRefused):
            services.conversation_rename(conversation=conversation, title=title)
    conversation.refresh_from_db()
    assert conversation.title == "old"


def test_user_message_create_refuses_what_cannot_be_stored(alice):
    """The service is the last gate: NUL and lone surrogates never reach a row."""
    for content in ("a\x00b", "\ud800"):
        with pytest.raises(text.TextRefused):
            services.user_message_create(owner=alice, conversation_id=None, content=content)
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_a_reply_is_stored_whatever_the_model_wrote(alice):
    """The model's text is untrusted too: a NUL or a lone surrogate in a reply
    is stored as U+FFFD instead of failing the save."""
    conversation = services.conversation_create(owner=alice, title="t")
    reply = services.assistant_message_start(conversation_id=conversation.pk, request_id="r1")
    services.assistant_message_finish(message_id=reply.pk, content="a\x00b\ud800c", status="complete")
    reply.refresh_from_db()
    assert (reply.content, reply.status) == ("a\ufffdb\ufffdc", "complete")


def test_a_message_for_a_conversation_deleted_meanwhile_is_not_found(alice, deleted_after_read):
    """A follow-up that races the conversation's delete (the delete lands after
    the conversation is read; injected here) is refused as not found, which
    the chat shows as `not_found`, rather than failing as a server error."""
    conversation = Conversation.objects.create(owner=alice, title="going")
    with pytest.raises(Conversation.DoesNotExist):
        services.user_message_create(owner=alice, conversation_id=conversation.pk, content="more")
    assert not Message.objects.exists()


def test_saving_a_reply_whose_conversation_was_deleted_writes_nothing(alice):
    """The end of a reply whose conversation was deleted meanwhile (its rows
    are gone) writes nothing and raises nothing."""
    conversation = Conversation.objects.create(owner=alice)
    reply = services.assistant_message_start(conversation_id=conversation.pk, request_id="r1")
    conversation.delete()
    services.assistant_message_finish(message_id=reply.pk, content="x", status=Message.Status.CANCELLED)
    services.user_message_cancel(message_id=reply.pk)
    assert not Message.objects.exists()
