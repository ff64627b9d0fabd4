"""`manage.py priority_class set|list|delete`: priority classes for scripts.

    priority_class set NAME --rank N [--group GROUP ...] [--staff] [--api]
    priority_class list
    priority_class delete NAME

`set` creates or updates a class (lower rank starts first), `delete`
removes one; both are audited in the settings' change trail (as "system")
and apply live in every process, like a save in the console (issue #15).
"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from queueadmin import selectors, services


class Command(BaseCommand):
    """Create, update, list or delete priority classes."""

    help = "Create or update (set), list or delete the priority classes of generation requests."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        set_ = actions.add_parser("set", help="Create or update a class.")
        set_.add_argument("name")
        set_.add_argument("--rank", type=int, required=True, help="Lower starts first (0 to 10000).")
        set_.add_argument(
            "--group", action="append", default=[], dest="groups", help="A Django group whose members belong."
        )
        set_.add_argument("--staff", action="store_true", help="Staff members belong.")
        set_.add_argument("--api", action="store_true", help="Requests through the API belong.")
        actions.add_parser("list", help="Show the classes, best first.")
        delete = actions.add_parser("delete", help="Delete a class.")
        delete.add_argument("name")

    def handle(self, *args, action: str, **options):
        if action == "set":
            if options["rank"] < 0:
                raise CommandError("--rank must be 0 or more")
            try:
                row = services.priority_class_set(
                    user=None,
                    name=options["name"],
                    rank=options["rank"],
                    groups=options["groups"],
                    staff=options["staff"],
                    api=options["api"],
                )
            except ValidationError as error:
                raise CommandError("; ".join(error.messages)) from error
            self.stdout.write(f"Saved {self._line(row)}")
        elif action == "delete":
            if not services.priority_class_delete(user=None, name=options["name"]):
                raise CommandError(f"No priority class named {options['name']!r}")
            self.stdout.write(f"Deleted {options['name']}")
        else:
            rows = selectors.priority_classes_list()
            if not rows:
                self.stdout.write("No priority classes: requests start first come, first served.")
            for row in rows:
                self.stdout.write(self._line(row))

    @staticmethod
    def _line(row) -> str:
        described = row.describe()
        members = [f"group {g}" for g in described["groups"]]
        members += ["staff"] * row.staff + ["API requests"] * row.api
        return f"{row.name}: rank {row.rank}; " + (", ".join(members) or "no members")
