"""HTTP views of the chat: login, the page, and the JSON endpoints' isolation."""

import json

import pytest
from django.urls import reverse

from generation import services
from generation.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bobs_conversation(bob):
    conversation = services.conversation_create(owner=bob, title="bob's plans")
    Message.objects.create(conversation=conversation, role="user", content="secret")
    return conversation


def test_chat_page_requires_login(client):
    """Anonymous visitors are sent to the login form."""
    response = client.get("/")
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_login_and_logout(client, alice):
    """The Django login form logs in; logout is a POST and logs out."""
    response = client.post(reverse("login"), {"username": "alice", "password": "pw-alice-123"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post(reverse("logout"))
    assert client.get("/").status_code == 302


def test_no_self_signup(client):
    """There is no sign-up page: staff create users in the admin."""
    assert client.get("/accounts/signup/").status_code == 404
    assert client.get("/accounts/register/").status_code == 404


def test_chat_page_renders_composer_and_script(alice_client):
    """The page carries the composer, its config and the chat script."""
    response = alice_client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="input"' in body
    assert "js/chat.js" in body
    assert '"maxChars": 8000' in body


def test_conversation_list_is_own_and_newest_first(alice_client, alice, bobs_conversation):
    """The sidebar lists only the user's conversations, newest first."""
    first, _ = services.user_message_create(owner=alice, conversation_id=None, content="first one")
    second, _ = services.user_message_create(owner=alice, conversation_id=None, content="second one")
    data = alice_client.get(reverse("conversation-list")).json()
    assert [c["title"] for c in data["conversations"]] == ["second one", "first one"]
    services.user_message_create(owner=alice, conversation_id=first.conversation_id, content="bump")
    data = alice_client.get(reverse("conversation-list")).json()
    assert [c["id"] for c in data["conversations"]] == [first.conversation_id, second.conversation_id]


def test_history_returns_messages_as_text(alice_client, alice):
    """History returns the stored messages verbatim, markup included."""
    message, _ = services.user_message_create(owner=alice, conversation_id=None, content="<b>hi</b>")
    data = alice_client.get(reverse("conversation-detail", args=[message.conversation_id])).json()
    assert [(m["role"], m["content"], m["status"]) for m in data["messages"]] == [
        ("user", "<b>hi</b>", "complete")
    ]


def test_rename_and_delete_own_conversation(alice_client, alice):
    """Rename and delete work on the user's own conversation."""
    conversation = services.conversation_create(owner=alice, title="old")
    url = reverse("conversation-rename", args=[conversation.pk])
    response = alice_client.post(url, json.dumps({"title": "new"}), content_type="application/json")
    assert response.json()["conversation"]["title"] == "new"
    assert (
        alice_client.post(url, json.dumps({"title": " "}), content_type="application/json").status_code == 400
    )
    assert alice_client.post(url, "not json", content_type="application/json").status_code == 400
    assert alice_client.post(reverse("conversation-delete", args=[conversation.pk])).status_code == 200
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("conversation-detail", "get"),
        ("conversation-rename", "post"),
        ("conversation-sampling", "post"),
        ("conversation-delete", "post"),
        ("conversation-restore", "post"),
    ],
)
def test_other_users_conversation_is_404(alice_client, bobs_conversation, name, method):
    """Another user's conversation id gives 404 and leaves it untouched."""
    url = reverse(name, args=[bobs_conversation.pk])
    if method == "get":
        response = alice_client.get(url)
    else:
        response = alice_client.post(url, json.dumps({"title": "mine"}), content_type="application/json")
    assert response.status_code == 404
    assert "secret" not in response.content.decode()
    bobs_conversation.refresh_from_db()
    assert bobs_conversation.title == "bob's plans"


def test_other_users_conversation_page_is_404(alice_client, bobs_conversation):
    """The page URL of another user's conversation is 404 too."""
    assert alice_client.get(f"/c/{bobs_conversation.pk}/").status_code == 404


def test_json_endpoints_answer_401_when_logged_out(client, bobs_conversation):
    """The script gets 401 JSON, not a redirect, when the session has ended."""
    assert client.get(reverse("conversation-list")).status_code == 401
    assert client.get(reverse("conversation-detail", args=[bobs_conversation.pk])).status_code == 401
    sampling = reverse("conversation-sampling", args=[bobs_conversation.pk])
    assert client.post(sampling, '{"temperature": 1}', content_type="application/json").status_code == 401


def test_writes_need_csrf(alice, bobs_conversation):
    """Rename and delete are refused without a CSRF token."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    conversation = services.conversation_create(owner=alice, title="keep")
    assert client.post(reverse("conversation-delete", args=[conversation.pk])).status_code == 403
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_admin_lists_and_searches_conversations(client, admin_user, alice):
    """Staff see conversations in the admin, searchable by owner, messages inline."""
    message, _ = services.user_message_create(owner=alice, conversation_id=None, content="about tea")
    client.force_login(admin_user)
    response = client.get("/admin/generation/conversation/", {"q": "alice"})
    assert response.status_code == 200
    assert "about tea" in response.content.decode()
    response = client.get(f"/admin/generation/conversation/{message.conversation_id}/change/")
    assert response.status_code == 200
    assert "about tea" in response.content.decode()


# Untrusted text: every value a person may send gets a clear answer --------

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps({"title": "a\x00b"}), "null characters"),
        (json.dumps({"title": "a\ud800b"}), "unpaired surrogate"),
        ('{"title": "\\udfff"}', "unpaired surrogate"),
        (json.dumps({"title": "x" * 201}), "longer than 200 characters"),
        (json.dumps({"title": "\U0001f600" * 201}), "longer than 200 characters"),
        (json.dumps({"title": 5}), "Give the conversation a title"),
        (json.dumps({"title": ["a"]}), "Give the conversation a title"),
        (json.dumps({"title": None}), "Give the conversation a title"),
        (json.dumps(["title"]), "Give the conversation a title"),
        ("\xff\xfe not UTF-8".encode("latin1"), "must be UTF-8 JSON"),
        ('{"title": "a\xffb"}'.encode("latin1"), "must be UTF-8 JSON"),
        ("[" * 100_000, "must be JSON"),
    ],
    ids=[
        "NUL",
        "lone surrogate",
        "escaped lone surrogate",
        "201 characters",
        "201 emoji",
        "number",
        "list",
        "null",
        "not an object",
        "not UTF-8",
        "invalid UTF-8 inside a title",
        "nested too deeply",
    ],
)
def test_rename_refuses_what_cannot_be_stored_with_a_reason(alice_client, alice, body, reason):
    """A title that is not storable text, too long, or not a string is a 400
    with a sentence saying why, never a 500, and the old title stays."""
    conversation = services.conversation_create(owner=alice, title="old")
    url = reverse("conversation-rename", args=[conversation.pk])
    response = alice_client.post(url, body, content_type="application/json")
    assert response.status_code == 400
    assert reason in response.json()["error"]
    conversation.refresh_from_db()
    assert conversation.title == "old"


@pytest.mark.parametrize(
    "title",
    [
        "\U0001f600" * 200,
        FAMILY * 28,
        "\u202eevil.exe\u202c \u200bzero\u200dwidth \u05e9\u05dc\u05d5\u05dd",
        "bell\x07 escape\x1b[0m",
    ],
    ids=["200 emoji", "28 family emoji", "RTL and zero-width", "controls"],
)
def test_rename_stores_any_text_within_the_limit_exactly(alice_client, alice, title):
    """Emoji, joined emoji, RTL and zero-width marks and controls are text:
    200 code points of them are stored and read back unchanged."""
    conversation = services.conversation_create(owner=alice, title="old")
    url = reverse("conversation-rename", args=[conversation.pk])
    response = alice_client.post(url, json.dumps({"title": title}), content_type="application/json")
    assert response.status_code == 200
    assert response.json()["conversation"]["title"] == title
    listed = alice_client.get(reverse("conversation-list")).json()["conversations"]
    assert [c["title"] for c in listed] == [title]


@pytest.mark.parametrize("path", ["/api/conversations/{}/", "/c/{}/"])
def test_a_huge_conversation_id_is_404(alice_client, path):
    """An id past the database's integer range is a conversation that does not exist."""
    assert alice_client.get(path.format(10**30)).status_code == 404
    for name in (
        "conversation-rename",
        "conversation-sampling",
        "conversation-delete",
        "conversation-restore",
    ):
        response = alice_client.post(
            reverse(name, args=[10**30]), json.dumps({"title": "t"}), content_type="application/json"
        )
        assert response.status_code == 404


def test_the_message_box_does_not_cut_what_is_typed(alice_client):
    """No maxlength on the message box: it counts UTF-16 units, so it cut a
    paste of 8,000 emoji at 4,000; the page's script counts code points."""
    page = alice_client.get("/").content.decode()
    assert 'id="input"' in page
    assert "maxlength" not in page


def test_rename_of_a_conversation_deleted_meanwhile_is_404(alice_client, alice, deleted_after_read):
    """A rename that races the conversation's delete (another tab or process
    deletes it after the view has read it; injected here) answers 404, not 500."""
    conversation = services.conversation_create(owner=alice, title="old")
    url = reverse("conversation-rename", args=[conversation.pk])
    response = alice_client.post(url, json.dumps({"title": "new"}), content_type="application/json")
    assert response.status_code == 404
    assert not Conversation.objects.exists()
