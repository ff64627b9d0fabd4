"""`manage.py prune_stats --days N`: delete statistics older than N days."""

import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from queueadmin import services


class Command(BaseCommand):
    """Delete GenerationRecords and QueueSnapshots older than --days (default 30)."""

    help = "Delete generation records and queue snapshots older than --days days."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=30, help="Keep this many days (default 30).")

    def handle(self, *args, days: int, **options):
        if days < 0:
            raise CommandError("--days must be 0 or more")
        before = timezone.now() - datetime.timedelta(days=days)
        deleted = services.stats_prune(before=before)
        self.stdout.write(
            f"Deleted {deleted['records']} records and {deleted['snapshots']} snapshots "
            f"from before {before:%Y-%m-%d %H:%M:%S %Z}."
        )
