"""`manage.py apikey create|list|revoke`, as scripts and operators use it."""

import io
import re

import pytest
from django.core.management import CommandError, call_command

from generation import selectors, services
from generation.models import ApiKey

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The users' password hashes are beside the point here: hash them fast."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def apikey(*args) -> tuple[str, str]:
    """Run the command; its stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command("apikey", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_prints_only_the_token_and_it_authenticates(alice):
    """stdout is the token and a newline, nothing else, so `$(…)` captures it;
    the token authenticates alice under the given name."""
    out, err = apikey("create", "alice", "--name", "nightly 🌙 report")
    token = out.removesuffix("\n")
    assert "\n" not in token
    assert token.startswith("csk-")
    api_key = selectors.api_key_authenticate(token)
    assert api_key.user == alice
    assert api_key.name == "nightly 🌙 report"
    assert token not in err


def test_list_and_revoke(alice, bob):
    """`list` shows every key or one person's; `revoke` stops the key and
    `list` then shows when; revoking again is harmless."""
    alices, alice_token = services.api_key_create(user=alice, name="alice-key")
    services.api_key_create(user=bob, name="bob-key")
    everyone, _ = apikey("list")
    assert "alice-key" in everyone
    assert "bob-key" in everyone
    assert alices.prefix in everyone
    assert alice_token not in everyone
    only_bob, _ = apikey("list", "bob")
    assert "bob-key" in only_bob
    assert "alice-key" not in only_bob

    out, _ = apikey("revoke", str(alices.pk))
    assert f"Revoked key {alices.pk}" in out
    assert selectors.api_key_authenticate(alice_token) is None
    header, row = apikey("list", "alice")[0].splitlines()
    columns = dict(zip(re.split(r"\s{2,}", header), re.split(r"\s{2,}", row), strict=True))
    assert columns["REVOKED"] != "-"
    assert columns["LAST USED"] == "-"
    assert columns["NAME"] == "alice-key"
    _, err = apikey("revoke", str(alices.pk))
    assert "already revoked" in err


def test_unknown_user_or_key_is_a_clear_error(alice):
    """An unknown user or key id is a CommandError naming it; nothing is made."""
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        apikey("create", "nobody", "--name", "x")
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        apikey("list", "nobody")
    with pytest.raises(CommandError, match="no API key with id 999"):
        apikey("revoke", "999")
    assert not ApiKey.objects.exists()


def test_unusable_names_are_a_clear_error(alice):
    """A NUL, a lone surrogate (what argv holds for bytes that are not UTF-8)
    or a blank name is a CommandError with the reason, and no key is made."""
    for name, reason in [
        ("a\x00b", "null characters"),
        ("bad \udcff", "unpaired surrogate"),
        ("  ", "a name"),
    ]:
        with pytest.raises(CommandError, match=reason):
            apikey("create", "alice", "--name", name)
    assert not ApiKey.objects.exists()


def test_list_escapes_terminal_control_characters(alice):
    """A name holding an ANSI escape or a bidi override is listed with those
    characters escaped, so it cannot repaint or reorder the operator's terminal;
    emoji and right-to-left letters are listed as they are."""
    services.api_key_create(user=alice, name="\x1b[2Jwipe \u202eevil 🔑 مفتاح")
    out, _ = apikey("list")
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\\u001b[2Jwipe \\u202eevil 🔑 مفتاح" in out
