"""The process's one generation service, created lazily on first use.

Daphne has no ASGI lifespan, so the service cannot start with the app; the
first consumer that needs it calls `get_service()` inside the running event
loop. A service is bound to its loop: when a different loop asks (each test
runs its own), the old service's thread is stopped and a new one starts,
reusing the model already loaded in this process.
"""

import asyncio

from django.conf import settings

from generation.runtime.requests import Limits
from generation.runtime.service import GenerationService

_service: GenerationService | None = None


def default_limits() -> Limits:
    """The limits from settings (environment variables)."""
    return Limits(
        max_concurrency=settings.GENERATION_MAX_CONCURRENCY,
        max_queue_size=settings.GENERATION_MAX_QUEUE,
        max_active_per_user=settings.GENERATION_MAX_ACTIVE_PER_USER,
        queue_timeout_s=settings.GENERATION_QUEUE_TIMEOUT_S,
        max_new_tokens=settings.GENERATION_MAX_NEW_TOKENS,
    )


def configured_model_loader():
    """A callable that loads (once per process) the model named by settings.

    It runs in the model thread, and first sets torch's thread count when
    GENERATION_TORCH_THREADS asks: with several processes on one host, each
    using every core, their threads fight over the cores and a decode step
    gets many times slower.
    """

    def load():
        # The model stack is imported here, in the model thread, so that
        # importing the web app (every manage.py command, every page) does not
        # import torch and transformers, which takes seconds.
        import torch

        from generation.runtime.loading import shared_model

        if settings.GENERATION_TORCH_THREADS:
            torch.set_num_threads(settings.GENERATION_TORCH_THREADS)
        return shared_model(
            settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
        )

    return load


def get_service() -> GenerationService:
    """Return this process's service, starting it in the running loop if needed."""
    global _service
    loop = asyncio.get_running_loop()
    if _service is None or _service.loop is not loop:
        if _service is not None:
            _service.stop()
        _service = GenerationService(load=configured_model_loader(), limits=default_limits())
        _service.start()
        from queueadmin.control import attach  # live settings, console and statistics

        attach(_service)
    return _service
