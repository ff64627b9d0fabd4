"""System checks: the limits set by environment variables must make sense
together, as the console's form requires of a saved row.

Until staff first save the settings, every process runs on the GENERATION_*
variables; a cap of 0 would queue every message until it timed out, and a
reply budget above half the model's context would leave no room for the
question. `manage.py check` and `migrate` (so `make run` and deploy/stack.sh)
stop with one error per variable, naming it, instead of serving such limits.
"""

from django.core import checks
from django.core.exceptions import ValidationError

# The environment variable behind each field's default (README, settings table).
ENV_VARIABLES = {
    "max_concurrency": "GENERATION_MAX_CONCURRENCY",
    "max_queue_size": "GENERATION_MAX_QUEUE",
    "max_active_per_user": "GENERATION_MAX_ACTIVE_PER_USER",
    "max_active_api_per_user": "GENERATION_MAX_ACTIVE_API_PER_USER",
    "queue_timeout_s": "GENERATION_QUEUE_TIMEOUT_S",
    "max_new_tokens": "GENERATION_MAX_NEW_TOKENS",
}


@checks.register()
def check_generation_limits(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Validate the environment's default limits with the settings row's own
    validators and cross-checks (GenerationSettings.full_clean)."""
    from django.conf import settings

    from queueadmin.models import GenerationSettings

    errors = []
    try:
        GenerationSettings().full_clean(exclude=["updated_by"])
    except ValidationError as error:
        for field, messages in error.message_dict.items():
            variable = ENV_VARIABLES.get(field, field)
            value = getattr(settings, variable, None)
            errors += [
                checks.Error(f"{variable}={value}: {message}", id="queueadmin.E001", obj=variable)
                for message in messages
            ]
    if settings.CHAT_MAX_MESSAGE_CHARS < 1:
        errors.append(
            checks.Error(
                f"CHAT_MAX_MESSAGE_CHARS={settings.CHAT_MAX_MESSAGE_CHARS}: must be at least 1.",
                id="queueadmin.E002",
                obj="CHAT_MAX_MESSAGE_CHARS",
            )
        )
    return errors
