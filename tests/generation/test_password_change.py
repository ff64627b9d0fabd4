"""Changing one's own password from the chat page (Django's PasswordChangeView
with the site's templates): the session that changed it stays logged in,
its open chat socket too, and every other session ends."""

import pytest
from channels.auth import AuthMiddlewareStack
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.urls import reverse

from generation.consumers import ChatConsumer
from tests.generation.conftest import close_code, receive_until

OLD, NEW = "pw-alice-123", "a-brand-new-secret-456"  # alice's, see conftest


def change(client, old=OLD, new=NEW):
    return client.post(
        reverse("password_change"), {"old_password": old, "new_password1": new, "new_password2": new}
    )


@pytest.mark.django_db
def test_the_chat_page_links_to_the_password_form_in_the_sites_look(alice):
    """The chat page links to the form; the form and its answer are the
    site's pages (not the admin's), and a wrong old password changes nothing."""
    client = Client()
    client.force_login(alice)
    assert reverse("password_change") in client.get("/").content.decode()
    form = client.get(reverse("password_change")).content.decode()
    assert 'class="login-card"' in form and "Back to the chat" in form
    wrong = change(client, old="not-my-password")
    assert wrong.status_code == 200 and 'role="alert"' in wrong.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(OLD)


@pytest.mark.django_db
def test_the_changing_session_stays_and_the_others_end(alice):
    """After the change this browser still reaches the chat and its JSON;
    another browser logged in before is sent to the login form."""
    here, elsewhere = Client(), Client()
    assert here.login(username="alice", password=OLD)
    assert elsewhere.login(username="alice", password=OLD)
    response = change(here)
    assert response.status_code == 302 and response.url == reverse("password_change_done")
    assert "Password changed" in here.get(response.url).content.decode()
    assert here.get("/").status_code == 200
    assert here.get(reverse("conversation-list")).status_code == 200
    assert elsewhere.get("/").status_code == 302
    assert elsewhere.get(reverse("conversation-list")).status_code == 401


@pytest.mark.django_db(transaction=True)
async def test_the_changing_browsers_chat_keeps_working(service, alice, websocket_logged_in):
    """Django's view gives the changing session a new key holding the new
    password's hash (update_session_auth_hash). Sockets opened on the old
    key, in this browser's other tabs as in others', close with 4401, on
    which the page reloads (static/js/socket.js); this browser's reload
    carries the new cookie, and its new socket stays open and chats: the
    watch finds the new hash in the new session."""
    here, before = await websocket_logged_in(ChatConsumer, "/ws/chat/", "alice", OLD)
    response = await here.post(
        reverse("password_change"), {"old_password": OLD, "new_password1": NEW, "new_password2": NEW}
    )
    assert response.status_code == 302
    assert await close_code(before, within=1.0) == 4401

    cookie = f"{settings.SESSION_COOKIE_NAME}={here.cookies[settings.SESSION_COOKIE_NAME].value}"
    chat = WebsocketCommunicator(
        AuthMiddlewareStack(ChatConsumer.as_asgi()), "/ws/chat/", headers=[(b"cookie", cookie.encode())]
    )
    connected, _ = await chat.connect(timeout=10)
    assert connected
    try:
        assert await chat.receive_nothing(timeout=1.2)  # two checks of the watch: still open
        await chat.send_json_to({"type": "send", "conversation": None, "content": "still here"})
        assert (await receive_until(chat, "started"))[0]["type"] == "accepted"
        await chat.send_json_to({"type": "cancel"})
        await receive_until(chat, "done")
    finally:
        await chat.disconnect()
