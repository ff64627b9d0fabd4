"""System checks for the generation service's settings.

With GENERATION_BACKEND=openai, the remote engine must answer before
chatsite serves. This is a deployment check with the tag "engine", so it
runs only when asked for: `manage.py check --deploy --tag engine` runs it
alone (Django runs only the checks with a given --tag, and deploy=True
checks only with --deploy; a plain `check --deploy` runs it with the rest).
The documented ways of starting by hand (`make run`, deploy/stack.sh start)
run that command before daphne, and stop with an error naming
GENERATION_OPENAI_BASE_URL and the reason rather than serve a site whose
every reply fails (the systemd unit does not: a reboot while the engine is
down should still serve logins; docs/deploy.md). Other commands (`migrate`, `createsuperuser`,
`model_folder`, which `make vllm` runs before the engine exists) do not ask
the engine, so they work while it is down. A malformed URL never gets here:
the settings module refuses it. Once running, the backend probes on its own
and recovers when the engine comes back.
"""

from django.core import checks

# The tag that selects the engine check: `manage.py check --deploy --tag engine`.
ENGINE_TAG = "engine"


@checks.register(ENGINE_TAG, deploy=True)
def check_openai_engine(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """GET {GENERATION_OPENAI_BASE_URL}/models, waiting at most the connect
    timeout; an error unless it lists a model we can use, and a warning when
    GENERATION_OPENAI_CONTEXT_TOKENS is more than the engine's max_model_len
    (the backend then uses the engine's). Nothing to check with another
    backend."""
    from django.conf import settings

    if settings.GENERATION_BACKEND != "openai":
        return []
    import openai

    from generation.runtime.backends.openai import remote

    config = remote.RemoteConfig.from_settings()
    try:
        card = remote.read_model_card(config)
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
    if shortfall := remote.context_shortfall(config, card):
        return [checks.Warning(shortfall, id="generation.W001", obj="GENERATION_OPENAI_CONTEXT_TOKENS")]
    return []
