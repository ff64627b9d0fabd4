"""App configuration for the queue settings, statistics and admin console."""

from django.apps import AppConfig


class QueueAdminConfig(AppConfig):
    """Generation settings that staff change live, and the queue's statistics."""

    name = "queueadmin"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from generation.runtime import registry
        from queueadmin import checks  # noqa: F401 - registers the limits' system check
        from queueadmin.control import attach

        # Live settings, the console and the statistics join every service.
        registry.on_service_start(attach)
