"""Untrusted text against PostgreSQL for real (run by test_postgres_text.py).

PostgreSQL refuses what SQLite stores (NUL in text) and counts varchar
lengths in code points; these cases answered 500 there. Not collected on its
own: it needs DATABASE_URL pointing at PostgreSQL.
"""

import json

import pytest
from django.db import connection
from django.urls import reverse

from generation import services, text
from generation.models import ApiKey, Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def on_postgresql():
    assert connection.vendor == "postgresql"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.mark.parametrize(
    "body", [json.dumps({"title": "a\x00b"}), '{"title": "a\\ud800b"}'], ids=["NUL", "surrogate"]
)
def test_rename_refuses_a_title_postgresql_cannot_store(alice_client, alice, body):
    """The issue's case: a NUL (or a lone surrogate) in a title is a 400 with a reason, not a 500."""
    conversation = services.conversation_create(owner=alice, title="old")
    response = alice_client.post(
        reverse("conversation-rename", args=[conversation.pk]), body, content_type="application/json"
    )
    assert response.status_code == 400
    assert "title" in response.json()["error"]
    conversation.refresh_from_db()
    assert conversation.title == "old"


def test_rename_stores_200_emoji(alice_client, alice):
    """varchar(200) counts code points, as the limit does: 200 emoji fit."""
    conversation = services.conversation_create(owner=alice, title="old")
    title = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466" * 28 + "\U0001f600\u200b\u202e\u05e9"
    response = alice_client.post(
        reverse("conversation-rename", args=[conversation.pk]),
        json.dumps({"title": title}),
        content_type="application/json",
    )
    assert response.status_code == 200
    conversation.refresh_from_db()
    assert conversation.title == title


def test_nothing_unstorable_reaches_a_row(alice):
    """A user message with NUL is refused before anything is stored; a reply
    with NUL from the model is stored with U+FFFD instead of failing."""
    with pytest.raises(text.TextRefused):
        services.user_message_create(owner=alice, conversation_id=None, content="a\x00b")
    assert not Conversation.objects.exists()
    message, _ = services.user_message_create(owner=alice, conversation_id=None, content="hi")
    reply = services.assistant_message_start(conversation_id=message.conversation_id, request_id="r1")
    services.assistant_message_finish(message_id=reply.pk, content="a\x00b", status="complete")
    assert Message.objects.get(pk=reply.pk).content == "a\ufffdb"


def test_a_huge_conversation_id_is_404(alice_client):
    """An id past bigint is a missing conversation, not a database error."""
    assert alice_client.get(f"/api/conversations/{10**30}/").status_code == 404
    assert alice_client.get(f"/c/{10**30}/").status_code == 404


def test_admin_refuses_a_nul_title(client, admin_user, alice):
    """The admin's conversation form refuses NUL with a form error, not a 500."""
    conversation = services.conversation_create(owner=alice, title="old")
    client.force_login(admin_user)
    url = f"/admin/generation/conversation/{conversation.pk}/change/"
    response = client.post(
        url, {"title": "a\x00b", "owner": alice.pk, "messages-TOTAL_FORMS": 0, "messages-INITIAL_FORMS": 0}
    )
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "old"


def test_admin_list_filters_with_a_nul_answer_400(admin_client):
    """The admin's list filters pass query parameters to PostgreSQL, which
    raises on NUL (a 500); the request is refused with 400 first."""
    assert admin_client.get("/admin/generation/conversation/?title=%00").status_code == 400
    assert admin_client.get("/admin/generation/conversation/?title=ok").status_code == 200


def test_api_key_names_on_postgresql(alice_client, alice, admin_client):
    """/keys/ stores 100 joined emoji (varchar(100) counts code points), answers
    a NUL name with a form error (page and admin), and a revoke of an id past
    bigint with 404, never a 500."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    name = family * 14 + "\u202e\u05e9"
    assert len(name) == 100
    assert alice_client.post("/keys/", {"name": name}).status_code == 200
    api_key = ApiKey.objects.get()
    assert api_key.name == name
    assert alice_client.post("/keys/", {"name": "a\x00b"}).status_code == 400
    assert alice_client.post(f"/keys/{10**30}/revoke/").status_code == 404
    response = admin_client.post(
        f"/admin/generation/apikey/{api_key.pk}/change/", {"name": "a\x00b", "user": alice.pk}
    )
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()
    assert ApiKey.objects.get().name == name
