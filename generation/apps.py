"""App configuration for the chat and its generation service."""

from django.apps import AppConfig


class GenerationConfig(AppConfig):
    """The chat app. The generation service does not start here: it starts
    lazily inside the running event loop on first use, since daphne has no
    lifespan. Only signal receivers are connected."""

    name = "generation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from generation import (
            checks,  # noqa: F401 - registers the remote engine's system check
            signals,  # noqa: F401 - connects the login log receivers
        )
