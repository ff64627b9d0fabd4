"""System checks for the generation service's settings.

With GENERATION_BACKEND=openai, the remote engine must answer before
chatsite starts: `manage.py check` and `migrate` (so `make run`, which
migrates before starting daphne) stop with an error naming
GENERATION_OPENAI_BASE_URL and the reason, rather than serving a site whose
every reply fails. A malformed URL never gets here: the settings module
refuses it. Once running, the backend probes on its own and recovers when
the engine comes back.
"""

from django.core import checks


@checks.register()
def check_openai_engine(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """GET {GENERATION_OPENAI_BASE_URL}/models, waiting at most the connect
    timeout; an error unless it lists a model we can use."""
    from django.conf import settings

    if settings.GENERATION_BACKEND != "openai":
        return []
    import openai

    from generation.runtime.backends.openai import remote

    config = remote.RemoteConfig.from_settings()
    try:
        remote.read_model_card(config)
    except (openai.APIError, remote.EngineUnusable) as error:
        return [
            checks.Error(
                f"GENERATION_OPENAI_BASE_URL={config.base_url}: {remote.unusable_message(config, error)}",
                hint="Start the engine (make vllm serves the bundled model on http://127.0.0.1:8100/v1), "
                "or point GENERATION_OPENAI_BASE_URL at one that runs.",
                id="generation.E001",
                obj="GENERATION_OPENAI_BASE_URL",
            )
        ]
    return []
