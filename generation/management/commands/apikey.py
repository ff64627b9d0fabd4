"""`manage.py apikey create|list|revoke`: API keys for scripts and operators.

    apikey create USERNAME --name NAME   prints the new key's token, and nothing else, on stdout
    apikey list [USERNAME]               every key (or one person's), newest first
    apikey revoke KEY_ID                 revokes the key with that id (as `list` shows it)

The same services as the /keys/ page and the admin do the work; a refusal
(an unknown person or key, an unusable name) is a CommandError: a sentence
on stderr and exit status 1.
"""

import unicodedata

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from generation import selectors, services, text
from generation.models import ApiKey

# Bidirectional embeddings, overrides and isolates: printed raw, a name
# holding one would reorder the rest of its line on the operator's terminal.
_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(value: str) -> str:
    """`value` safe to print on a terminal: control characters (an ANSI escape
    in a key's name, say) and bidi controls are shown as \\uXXXX escapes;
    everything else, emoji and right-to-left scripts included, as it is."""
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS else c for c in value
    )


def _when(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M") if moment else "-"


class Command(BaseCommand):
    help = "Create, list and revoke API keys for the OpenAI-compatible API (/v1/)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = actions.add_parser(
            "create", help="Make a key for USERNAME and print its token (only the token) on stdout."
        )
        create.add_argument("username")
        create.add_argument("--name", required=True, help="What will use the key, e.g. 'nightly report'.")
        listing = actions.add_parser("list", help="List every key, or USERNAME's keys.")
        listing.add_argument("username", nargs="?")
        revoke = actions.add_parser("revoke", help="Revoke the key with id KEY_ID (see `list`).")
        revoke.add_argument("key_id", type=int)

    def handle(self, *args, action: str, **options):
        if action == "create":
            self._create(options["username"], options["name"])
        elif action == "list":
            self._list(options["username"])
        else:
            self._revoke(options["key_id"])

    def _user(self, username: str):
        User = get_user_model()
        try:
            return User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"There is no user named {printable(username)!r}.") from None

    def _create(self, username: str, name: str) -> None:
        user = self._user(username)
        try:
            api_key, token = services.api_key_create(user=user, name=name)
        except text.TextRefused as refused:
            raise CommandError(str(refused)) from None
        # stdout carries the token alone, so that `key=$(manage.py apikey create …)` works.
        self.stdout.write(token)
        self.stderr.write(f"Created key {api_key.pk} ({api_key.prefix}…) for {printable(username)}.")
        if not user.is_active:
            self.stderr.write(
                "Note: this user is inactive, so the key works only once they are active again."
            )

    def _list(self, username: str | None) -> None:
        keys = (
            selectors.api_keys_of(self._user(username))
            if username is not None
            else ApiKey.objects.order_by("-created", "-id")
        ).select_related("user")
        rows = [("ID", "USER", "PREFIX", "CREATED", "LAST USED", "REVOKED", "NAME")]
        rows += [
            (
                str(key.pk),
                printable(key.user.get_username()),
                key.prefix + "…",
                _when(key.created),
                _when(key.last_used_at),
                _when(key.revoked_at),
                printable(key.name),
            )
            for key in keys
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            # The name goes last: its width on screen (emoji, wide scripts) is not its length.
            self.stdout.write(
                "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
            )

    def _revoke(self, key_id: int) -> None:
        try:
            api_key = ApiKey.objects.select_related("user").get(pk=key_id)
        except ApiKey.DoesNotExist:
            raise CommandError(f"There is no API key with id {key_id}.") from None
        if api_key.is_revoked:
            self.stderr.write(f"Key {key_id} was already revoked on {_when(api_key.revoked_at)}.")
            return
        services.api_key_revoke(api_key=api_key)
        self.stdout.write(
            f"Revoked key {key_id} ({api_key.prefix}…, {printable(api_key.name)}) "
            f"of {printable(api_key.user.get_username())}."
        )
