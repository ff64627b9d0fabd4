"""API keys' services and selectors, against the database: what is stored,
who a token authenticates, last-used writes, and the revoke announcement."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

from generation import selectors, services, text
from generation.models import ApiKey

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The users' password hashes are beside the point here: hash them fast."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_only_a_keyed_hash_of_the_token_is_stored(alice):
    """The token is returned once; the row holds its HMAC and first 12
    characters, and no column holds the token or its secret part."""
    api_key, token = services.api_key_create(user=alice, name="editor")
    assert token.startswith("csk-")
    assert len(token) == 4 + 43
    row = ApiKey.objects.filter(pk=api_key.pk).values().get()
    assert row["prefix"] == token[:12]
    assert row["digest"] == ApiKey.token_digest(token)
    assert len(row["digest"]) == 64
    secret_part = token[12:]
    assert not any(isinstance(value, str) and secret_part in value for value in row.values())
    assert services.api_key_create(user=alice, name="editor")[1] != token


def test_a_token_authenticates_its_owner(alice, bob):
    """Each token maps to its own key and owner; a token with one character
    changed maps to nobody."""
    alices, alice_token = services.api_key_create(user=alice, name="a")
    bobs, bob_token = services.api_key_create(user=bob, name="b")
    assert selectors.api_key_authenticate(alice_token) == alices
    found = selectors.api_key_authenticate(bob_token)
    assert found == bobs
    assert found.user == bob
    changed = alice_token[:-1] + ("A" if alice_token[-1] != "A" else "B")
    assert selectors.api_key_authenticate(changed) is None


@pytest.mark.parametrize(
    "token", ["", "csk-", "Bearer csk-x", "sk-" + "a" * 43, "csk-" + "a" * 10_000, "csk-\ud800"]
)
def test_unknown_and_malformed_tokens_get_none(alice, token):
    """Unknown, malformed, huge and unencodable tokens are simply not keys."""
    services.api_key_create(user=alice, name="a")
    assert selectors.api_key_authenticate(token) is None


def test_revoked_key_and_inactive_owner_get_none(alice, bob):
    """A revoked key stops at once; so does every key of a deactivated person,
    and it works again when they are reactivated."""
    api_key, token = services.api_key_create(user=alice, name="a")
    services.api_key_revoke(api_key=api_key)
    assert api_key.is_revoked
    assert selectors.api_key_authenticate(token) is None

    _, bob_token = services.api_key_create(user=bob, name="b")
    bob.is_active = False
    bob.save(update_fields=["is_active"])
    assert selectors.api_key_authenticate(bob_token) is None
    bob.is_active = True
    bob.save(update_fields=["is_active"])
    assert selectors.api_key_authenticate(bob_token) is not None


def test_keys_survive_a_secret_key_rotation_with_fallbacks(alice, settings):
    """Rotating SECRET_KEY the Django way (old key in SECRET_KEY_FALLBACKS)
    keeps keys working; dropping the old key ends them."""
    _, token = services.api_key_create(user=alice, name="a")
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "another-secret-key-for-the-rotation-test-0123456789"
    settings.SECRET_KEY_FALLBACKS = [old]
    assert selectors.api_key_authenticate(token) is not None
    settings.SECRET_KEY_FALLBACKS = []
    assert selectors.api_key_authenticate(token) is None


def test_a_key_used_during_a_rotation_outlives_the_old_secret(alice, settings):
    """A key the API accepted under the old secret (a fallback) has its
    digest renewed to the new one, so removing the fallback does not end it;
    a key not used during the rotation ends then."""
    used, used_token = services.api_key_create(user=alice, name="used")
    _, idle_token = services.api_key_create(user=alice, name="idle")
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "another-secret-key-for-the-rotation-test-0123456789"
    settings.SECRET_KEY_FALLBACKS = [old]
    assert services.api_key_renew_digest(api_key=selectors.api_key_authenticate(used_token), token=used_token)
    settings.SECRET_KEY_FALLBACKS = []
    assert selectors.api_key_authenticate(used_token).pk == used.pk
    assert selectors.api_key_authenticate(idle_token) is None


def test_last_used_is_written_at_most_once_a_minute(alice, django_assert_num_queries):
    """The first use is recorded; uses within the minute write nothing (not
    even through a fresh copy of the row, as another process would hold);
    a use after the minute is recorded again."""
    api_key, token = services.api_key_create(user=alice, name="a")
    assert api_key.last_used_at is None
    services.api_key_touch(api_key=api_key)
    first = ApiKey.objects.get(pk=api_key.pk).last_used_at
    assert first is not None
    with django_assert_num_queries(0):
        services.api_key_touch(api_key=api_key)
    other_copy = selectors.api_key_authenticate(token)
    services.api_key_touch(api_key=other_copy)
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at == first

    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=first - timedelta(seconds=61))
    services.api_key_touch(api_key=selectors.api_key_authenticate(token))
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at > first - timedelta(seconds=1)


@pytest.mark.parametrize(
    "name",
    ["🔑 laptop", "مفتاح المحرر", "\u202eevil\u202c", "👨‍👩‍👧‍👦" * 14, "tab\there", "a" * 100],
)
def test_any_unicode_name_is_kept(alice, name):
    """Emoji, right-to-left scripts, direction marks and joined emoji are kept
    exactly (only runs of whitespace become one space), up to 100 code points."""
    api_key, _ = services.api_key_create(user=alice, name=name)
    assert ApiKey.objects.get(pk=api_key.pk).name == " ".join(name.split())


@pytest.mark.parametrize(
    "name", ["", "   ", "\u200b", "\u202e\u202c", "\x07\x08", "nul\x00", "half \ud83d", "a" * 101]
)
def test_unusable_names_are_refused_with_a_reason(alice, name):
    """Empty, invisible (zero-width, direction overrides, controls alone),
    NUL, lone surrogates and over-long names are refused, nothing saved."""
    with pytest.raises(text.TextRefused) as refused:
        services.api_key_create(user=alice, name=name)
    assert str(refused.value)
    assert not ApiKey.objects.exists()


async def _receive(layer, channel, timeout=2.0):
    async with asyncio.timeout(timeout):
        return await layer.receive(channel)


def test_revoke_is_announced_to_the_keys_group_after_commit(alice, django_capture_on_commit_callbacks):
    """Revoking sends {"type": "apikey.revoked", "key": id} to group
    apikey.<id>, only once the transaction commits; a second revoke keeps the
    first revoke's time."""
    api_key, _ = services.api_key_create(user=alice, name="a")
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"apikey.{api_key.pk}", channel)
    assert api_key.group_name == f"apikey.{api_key.pk}"

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.api_key_revoke(api_key=api_key)
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is not None
    assert len(callbacks) == 1
    with pytest.raises(TimeoutError):  # nothing is sent before the commit
        async_to_sync(_receive)(layer, channel, timeout=0.05)
    callbacks[0]()
    assert async_to_sync(_receive)(layer, channel) == {"type": "apikey.revoked", "key": api_key.pk}

    first = api_key.revoked_at
    api_key.revoked_at = None  # a stale copy
    services.api_key_revoke(api_key=api_key)
    assert api_key.revoked_at == first


def test_revoke_stands_when_the_announcement_fails(alice, monkeypatch, django_capture_on_commit_callbacks):
    """With the channel layer failing (Redis down), the revoke is still saved
    and the request that made it does not fail; only open streams miss the news."""
    api_key, token = services.api_key_create(user=alice, name="a")

    async def refuse(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(get_channel_layer(), "group_send", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(api_key=api_key)
    assert selectors.api_key_authenticate(token) is None


def test_api_keys_of_lists_only_own_keys_newest_first(alice, bob):
    """A person's list holds their keys only, revoked ones included."""
    first, _ = services.api_key_create(user=alice, name="first")
    second, _ = services.api_key_create(user=alice, name="second")
    services.api_key_create(user=bob, name="bob's")
    services.api_key_revoke(api_key=first)
    assert list(selectors.api_keys_of(alice)) == [second, first]
    with pytest.raises(ApiKey.DoesNotExist):
        selectors.api_key_get(user=bob, key_id=first.pk)
    assert timezone.now() - second.created < timedelta(minutes=1)
