"""A running server purges deleted conversations by itself, past the undo window."""

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from generation import services
from generation.models import Conversation
from queueadmin import control
from tests.polling import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_purge(monkeypatch):
    monkeypatch.setattr(control, "PURGE_INTERVAL_S", 0.1)


async def test_a_running_service_purges_past_the_window_without_another_delete(
    fast_purge, live, django_user_model
):
    """Deleted longer ago than the window, a conversation goes within the
    purge interval though nobody deletes anything else; one still in its
    window stays, so Undo keeps working."""
    owner = await django_user_model.objects.acreate(username="carol")
    old = await Conversation.objects.acreate(owner=owner, title="old")
    recent = await Conversation.objects.acreate(owner=owner, title="recent")
    await database_sync_to_async(services.conversation_delete)(conversation=recent)
    await Conversation.all_objects.filter(pk=old.pk).aupdate(
        deleted_at=timezone.now() - services.DELETE_UNDO_WINDOW - timedelta(seconds=1)
    )

    async def old_is_gone():
        return not await Conversation.all_objects.filter(pk=old.pk).aexists()

    await wait_for(old_is_gone, timeout=10)
    assert await Conversation.all_objects.filter(pk=recent.pk).aexists()
