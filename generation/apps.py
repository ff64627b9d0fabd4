"""App configuration for the chat and its generation service."""

from django.apps import AppConfig


class GenerationConfig(AppConfig):
    """The chat app. Nothing starts here: the generation service starts lazily
    inside the running event loop on first use, since daphne has no lifespan."""

    name = "generation"
    default_auto_field = "django.db.models.BigAutoField"
