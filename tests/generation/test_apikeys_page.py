"""The /keys/ page and the API keys admin: who sees what, the token shown
once, revoking, CSRF, and names that are any Unicode."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from generation import selectors, services
from generation.models import ApiKey

pytestmark = pytest.mark.django_db

KEYS = "/keys/"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The users' password hashes are beside the point here: hash them fast."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def shown_token(response) -> str:
    """The token in the result page's copy box."""
    match = re.search(r'id="token"[^>]*value="(csk-[^"]+)"', response.content.decode())
    assert match, "no token on the page"
    return match.group(1)


def test_keys_page_requires_login(client):
    """Anonymous visitors are sent to the login form, for the list, a create and a revoke."""
    for response in (client.get(KEYS), client.post(KEYS, {"name": "x"}), client.post(f"{KEYS}1/revoke/")):
        assert response.status_code == 302
        assert response.url.startswith(reverse("login"))
    assert not ApiKey.objects.exists()


def test_chat_page_links_to_the_keys_page(alice_client):
    """The chat page has a link to /keys/."""
    assert f'href="{KEYS}"' in alice_client.get("/").content.decode()


def test_create_shows_the_token_once_and_it_works(alice_client, alice):
    """Creating a key shows its token once, on a page not to be cached; the
    token authenticates alice; the list afterwards shows the name and prefix,
    never the token."""
    response = alice_client.post(KEYS, {"name": "Open WebUI"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = shown_token(response)
    assert selectors.api_key_authenticate(token).user == alice

    listing = alice_client.get(KEYS).content.decode()
    assert "Open WebUI" in listing
    assert token[:12] in listing
    assert token not in listing
    assert token[12:] not in listing


def test_list_shows_only_own_keys(alice_client, alice, bob):
    """Bob's keys never appear on alice's page."""
    services.api_key_create(user=alice, name="alice-laptop")
    _, bob_token = services.api_key_create(user=bob, name="bob-secret-script")
    body = alice_client.get(KEYS).content.decode()
    assert "alice-laptop" in body
    assert "bob-secret-script" not in body
    assert bob_token[:12] not in body


def test_revoke_own_key_and_404_for_someone_elses(alice_client, alice, bob):
    """Alice revokes her key (it stops working, the list says so); bob's key
    and an unknown id are both 404 and bob's key keeps working; GET does not revoke."""
    key, token = services.api_key_create(user=alice, name="old")
    bobs, bob_token = services.api_key_create(user=bob, name="bob's")

    assert alice_client.get(f"{KEYS}{key.pk}/revoke/").status_code == 405
    assert selectors.api_key_authenticate(token) is not None

    response = alice_client.post(f"{KEYS}{key.pk}/revoke/", follow=True)
    assert response.redirect_chain[-1][0] == KEYS
    assert "is revoked" in response.content.decode()
    assert "Revoked" in response.content.decode()
    assert selectors.api_key_authenticate(token) is None

    assert alice_client.post(f"{KEYS}{bobs.pk}/revoke/").status_code == 404
    assert alice_client.post(f"{KEYS}{bobs.pk + 1000}/revoke/").status_code == 404
    assert selectors.api_key_authenticate(bob_token) is not None


def test_csrf_is_enforced(alice, bob):
    """Without the CSRF token, neither a create nor a revoke happens (403);
    with the token from the page, both work."""
    key, token = services.api_key_create(user=alice, name="keep")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(KEYS, {"name": "forged"}).status_code == 403
    assert client.post(f"{KEYS}{key.pk}/revoke/").status_code == 403
    assert list(selectors.api_keys_of(alice)) == [key]
    assert selectors.api_key_authenticate(token) is not None

    page = client.get(KEYS).content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert client.post(KEYS, {"name": "real", "csrfmiddlewaretoken": csrf}).status_code == 200
    assert client.post(f"{KEYS}{key.pk}/revoke/", {"csrfmiddlewaretoken": csrf}).status_code == 302
    assert selectors.api_key_authenticate(token) is None


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("🔑 ключ", "🔑 ключ"),
        ("مفتاح المحرر", "<bdi>مفتاح المحرر</bdi>"),
        ("\u202eevil\u202c <b>x</b>", "<bdi>\u202eevil\u202c &lt;b&gt;x&lt;/b&gt;</bdi>"),
        ("👨‍👩‍👧‍👦" * 14, "👨‍👩‍👧‍👦" * 14),
    ],
)
def test_unicode_names_are_kept_and_shown_as_text(alice_client, name, shown):
    """Emoji, Cyrillic, Arabic, direction overrides and markup are stored as
    typed and shown as text, isolated so they cannot reorder the row."""
    response = alice_client.post(KEYS, {"name": name})
    assert response.status_code == 200
    assert ApiKey.objects.get().name == name
    assert shown in alice_client.get(KEYS).content.decode()


@pytest.mark.parametrize(
    ("name", "error"),
    [("nul\x00here", "Null characters are not allowed"), ("", "This field is required"), ("   ", "required")],
)
def test_unusable_names_get_a_form_error_not_a_500(alice_client, name, error):
    """A NUL, an empty or blank name: the page comes back (400) with the
    reason next to the field, and nothing is saved."""
    response = alice_client.post(KEYS, {"name": name})
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not ApiKey.objects.exists()


def test_over_long_names_get_a_form_error(alice_client):
    """101 code points (one emoji counts one) is one too many."""
    assert alice_client.post(KEYS, {"name": "🔑" * 100}).status_code == 200
    response = alice_client.post(KEYS, {"name": "🔑" * 101})
    assert response.status_code == 400
    assert "at most 100 characters" in response.content.decode()
    assert ApiKey.objects.count() == 1


# The admin


@pytest.fixture
def staff_client(client, django_user_model):
    staff = django_user_model.objects.create_superuser("sam", "sam@example.com", "pw-sam-123")
    client.force_login(staff)
    return client


def test_admin_lists_everyones_keys_without_digest_or_add(staff_client, alice, bob):
    """Staff see every key with its owner, can search by owner, never see a
    digest, and cannot add a key (it would have no page to show its token)."""
    key, _ = services.api_key_create(user=alice, name="alice-editor")
    services.api_key_create(user=bob, name="bob-script")
    changelist = staff_client.get("/admin/generation/apikey/").content.decode()
    assert "alice-editor" in changelist
    assert "bob-script" in changelist
    searched = staff_client.get("/admin/generation/apikey/?q=bob").content.decode()
    assert "bob-script" in searched
    assert "alice-editor" not in searched
    change = staff_client.get(f"/admin/generation/apikey/{key.pk}/change/").content.decode()
    assert key.digest not in change
    assert key.digest not in changelist
    assert staff_client.get("/admin/generation/apikey/add/").status_code == 403


def test_admin_revoke_action(staff_client, alice, bob):
    """ "Revoke selected keys" revokes the chosen keys only."""
    alices, alice_token = services.api_key_create(user=alice, name="a")
    _, bob_token = services.api_key_create(user=bob, name="b")
    response = staff_client.post(
        "/admin/generation/apikey/",
        {"action": "revoke_selected", "_selected_action": [alices.pk]},
        follow=True,
    )
    assert "Revoked 1 key" in response.content.decode()
    assert selectors.api_key_authenticate(alice_token) is None
    assert selectors.api_key_authenticate(bob_token) is not None
    live = staff_client.get("/admin/generation/apikey/?state=live").content.decode()
    assert ">b<" in live
    assert ">a<" not in live


def test_admin_is_closed_to_people_who_are_not_staff(alice_client, alice):
    """A logged-in person who is not staff cannot list or revoke keys in the admin."""
    key, token = services.api_key_create(user=alice, name="a")
    assert alice_client.get("/admin/generation/apikey/").status_code == 302
    alice_client.post(
        "/admin/generation/apikey/", {"action": "revoke_selected", "_selected_action": [key.pk]}
    )
    assert selectors.api_key_authenticate(token) is not None
