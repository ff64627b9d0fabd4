"""The chat page's JSON endpoints (/api/) answer every refusal in JSON."""

import pytest
from django.test import Client

from generation import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_client(alice):
    client = Client()
    client.force_login(alice)
    return client


def error_of(response, status):
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    return response.json()["error"]


def test_unknown_conversation_and_unknown_endpoint_are_json_404(alice_client):
    """Another person's or a missing conversation, and a path under /api/ that
    does not exist, answer 404 with {"error"} rather than the HTML page."""
    assert "Not found" in error_of(alice_client.get("/api/conversations/999999/"), 404)
    assert "Not found" in error_of(alice_client.post("/api/conversations/999999/delete/"), 404)
    assert "Not found" in error_of(alice_client.get("/api/nothing-here/"), 404)


def test_wrong_method_is_json_405_with_allow(alice_client, alice):
    """GET on a POST-only endpoint: 405 in JSON naming the method to use, Allow kept."""
    conversation = services.conversation_create(owner=alice, title="t")
    response = alice_client.get(f"/api/conversations/{conversation.pk}/delete/")
    assert "POST" in error_of(response, 405)
    assert response["Allow"] == "POST"


def test_missing_csrf_token_is_json_403(alice):
    """A POST without the CSRF token: 403 in JSON that says to reload."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    conversation = services.conversation_create(owner=alice, title="t")
    assert "reload" in error_of(client.post(f"/api/conversations/{conversation.pk}/delete/"), 403)


def test_the_reason_is_in_the_readers_language(alice_client):
    """With Japanese chosen, the 404's reason is Japanese."""
    alice_client.cookies["django_language"] = "ja"
    reason = error_of(alice_client.get("/api/conversations/999999/"), 404)
    assert "Not found" not in reason and reason


def test_views_own_json_errors_pass_unchanged(alice_client, alice):
    """A view's specific refusal (an empty title) keeps its words."""
    conversation = services.conversation_create(owner=alice, title="t")
    response = alice_client.post(
        f"/api/conversations/{conversation.pk}/rename/", '{"title": ""}', content_type="application/json"
    )
    assert error_of(response, 400) == "Give the conversation a title."
