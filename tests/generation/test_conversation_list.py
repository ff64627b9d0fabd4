"""The sidebar's rename and delete-with-undo: services and views, against the database."""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from generation import selectors, services
from generation.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def conversation_with_messages(owner, title="plans"):
    conversation = services.conversation_create(owner=owner, title=title)
    Message.objects.create(conversation=conversation, role="user", content="question")
    Message.objects.create(conversation=conversation, role="assistant", content="answer")
    return conversation


def post(client, name, conversation_id, body=None):
    return client.post(
        reverse(name, args=[conversation_id]), json.dumps(body or {}), content_type="application/json"
    )


def test_a_deleted_conversation_is_gone_and_undo_brings_it_back_whole(alice):
    """Deleted, the conversation leaves the list and cannot be opened; undone
    within the window, it is back with its messages."""
    conversation = conversation_with_messages(alice)
    services.conversation_delete(conversation=conversation)
    assert list(selectors.conversation_list(owner=alice)) == []
    with pytest.raises(Conversation.DoesNotExist):
        selectors.conversation_get(owner=alice, conversation_id=conversation.pk)

    restored = services.conversation_restore(owner=alice, conversation_id=conversation.pk)
    assert restored.title == "plans"
    assert [c.pk for c in selectors.conversation_list(owner=alice)] == [conversation.pk]
    assert [m.content for m in selectors.message_list(conversation=restored)] == ["question", "answer"]


def test_undo_is_refused_after_the_window_and_a_later_delete_purges(alice, bob):
    """Past DELETE_UNDO_WINDOW the conversation cannot come back, and the next
    delete (anyone's) removes it and its messages for good."""
    old = conversation_with_messages(alice)
    services.conversation_delete(conversation=old)
    Conversation.all_objects.filter(pk=old.pk).update(
        deleted_at=timezone.now() - services.DELETE_UNDO_WINDOW - timedelta(seconds=1)
    )
    with pytest.raises(Conversation.DoesNotExist):
        services.conversation_restore(owner=alice, conversation_id=old.pk)

    services.conversation_delete(conversation=conversation_with_messages(bob))
    assert not Conversation.all_objects.filter(pk=old.pk).exists()
    assert not Message.objects.filter(conversation_id=old.pk).exists()
    assert Conversation.all_objects.filter(owner=bob).count() == 1  # in its window still


def test_only_the_owner_can_undo(alice, bob):
    """Another person cannot restore someone's deleted conversation, nor a live one."""
    conversation = conversation_with_messages(alice)
    with pytest.raises(Conversation.DoesNotExist):
        services.conversation_restore(owner=alice, conversation_id=conversation.pk)  # not deleted
    services.conversation_delete(conversation=conversation)
    with pytest.raises(Conversation.DoesNotExist):
        services.conversation_restore(owner=bob, conversation_id=conversation.pk)
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_no_reply_starts_in_a_deleted_conversation(alice):
    """A request that waited while its conversation was deleted finds it gone."""
    conversation = conversation_with_messages(alice)
    services.conversation_delete(conversation=conversation)
    with pytest.raises(Conversation.DoesNotExist):
        services.assistant_message_start(conversation_id=conversation.pk, request_id="r1")
    with pytest.raises(Conversation.DoesNotExist):
        services.user_message_create(owner=alice, conversation_id=conversation.pk, content="more")


def test_delete_then_undo_over_http(alice_client, alice):
    """The page's delete answers with the undo window; restore brings the
    conversation back into the list; a second restore is 404."""
    conversation = conversation_with_messages(alice)
    response = post(alice_client, "conversation-delete", conversation.pk)
    assert response.json() == {"deleted": conversation.pk, "undo_s": 60}
    assert alice_client.get(reverse("conversation-list")).json()["conversations"] == []
    assert alice_client.get(reverse("conversation-detail", args=[conversation.pk])).status_code == 404

    response = post(alice_client, "conversation-restore", conversation.pk)
    assert response.json()["conversation"]["title"] == "plans"
    assert [c["id"] for c in alice_client.get(reverse("conversation-list")).json()["conversations"]] == [
        conversation.pk
    ]
    assert post(alice_client, "conversation-restore", conversation.pk).status_code == 404


def test_another_users_delete_and_undo_are_404(alice_client, bob):
    """Bob's conversation, live or deleted, is a 404 to Alice's delete and restore."""
    conversation = conversation_with_messages(bob)
    assert post(alice_client, "conversation-delete", conversation.pk).status_code == 404
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    services.conversation_delete(conversation=conversation)
    assert post(alice_client, "conversation-restore", conversation.pk).status_code == 404
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_rename_delete_and_undo_need_login_and_csrf(alice, bob):
    """Without a session the endpoints answer 401; without the CSRF token, 403."""
    conversation = conversation_with_messages(alice)
    anonymous = Client()
    for name in ("conversation-rename", "conversation-delete", "conversation-restore"):
        assert post(anonymous, name, conversation.pk, {"title": "x"}).status_code == 401
    checked = Client(enforce_csrf_checks=True)
    checked.force_login(alice)
    for name in ("conversation-rename", "conversation-delete", "conversation-restore"):
        assert post(checked, name, conversation.pk, {"title": "x"}).status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "plans" and conversation.deleted_at is None


def test_rename_keeps_the_whole_title_and_refuses_an_overlong_one(alice_client, alice):
    """A title of 200 code points (emoji included) is kept whole; one more is
    refused with a reason, and the old title stays."""
    conversation = conversation_with_messages(alice)
    whole = "\U0001f468\u200d\U0001f469\u200d\U0001f467 家族の予定 " * 20
    whole = " ".join(whole.split())[:200]
    response = post(alice_client, "conversation-rename", conversation.pk, {"title": whole})
    assert response.json()["conversation"]["title"] == whole
    response = post(alice_client, "conversation-rename", conversation.pk, {"title": whole + "x" * 201})
    assert response.status_code == 400 and response.json()["error"]
    conversation.refresh_from_db()
    assert conversation.title == whole
