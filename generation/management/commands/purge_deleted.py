"""`manage.py purge_deleted`: remove for good the conversations deleted
longer ago than the undo window (services.DELETE_UNDO_WINDOW)."""

from django.core.management.base import BaseCommand
from django.utils import timezone

from generation import services


class Command(BaseCommand):
    """Purge conversations (and their messages) whose undo window has passed.

    A delete already purges the older ones whenever anybody deletes
    something, and a process whose generation service runs purges every
    PURGE_INTERVAL_S (queueadmin.control); this command does it without
    either, so a deleted conversation is gone within the window plus the
    command's period even on a quiet site or after a restart. Run it every minute from cron or a systemd timer
    (deploy/chatsite-purge.timer). Safe to run from several hosts at once.
    """

    help = "Remove for good the conversations deleted longer ago than the undo window."

    def handle(self, *args, **options):
        before = timezone.now() - services.DELETE_UNDO_WINDOW
        purged = services.conversations_purge(before=before)
        self.stdout.write(f"Purged {purged} conversations deleted before {before:%Y-%m-%d %H:%M:%S %Z}.")
