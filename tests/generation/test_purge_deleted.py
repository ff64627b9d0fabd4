"""`manage.py purge_deleted`: deleted conversations go for good without anyone deleting again."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from generation import services
from generation.models import Conversation, Message

pytestmark = pytest.mark.django_db


def conversation_with_message(owner, title):
    conversation = services.conversation_create(owner=owner, title=title)
    Message.objects.create(conversation=conversation, role="user", content="secret")
    return conversation


def test_the_command_purges_past_the_window_and_keeps_the_rest(alice):
    """A conversation deleted longer ago than the undo window is removed with
    its messages by the command alone; one still in its window, and one not
    deleted, stay."""
    old = conversation_with_message(alice, "old")
    recent = conversation_with_message(alice, "recent")
    services.conversation_delete(conversation=old)
    services.conversation_delete(conversation=recent)
    # Aged after the last delete, so that only the command can purge it.
    Conversation.all_objects.filter(pk=old.pk).update(
        deleted_at=timezone.now() - services.DELETE_UNDO_WINDOW - timedelta(seconds=1)
    )
    kept = conversation_with_message(alice, "kept")

    out = StringIO()
    call_command("purge_deleted", stdout=out)

    assert "Purged 1 conversations" in out.getvalue()
    assert not Conversation.all_objects.filter(pk=old.pk).exists()
    assert not Message.objects.filter(conversation_id=old.pk).exists()
    assert Conversation.all_objects.filter(pk=recent.pk).exists()  # Undo still possible
    assert Conversation.objects.filter(pk=kept.pk).exists()
    services.conversation_restore(owner=alice, conversation_id=recent.pk)
