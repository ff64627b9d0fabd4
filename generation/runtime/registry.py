"""The process's one generation service, created lazily on first use.

Daphne has no ASGI lifespan, so the service cannot start with the app; the
first consumer that needs it calls `get_service()` inside the running event
loop. A service is bound to its loop: when a different loop asks (each test
runs its own), the old service is stopped and a new one starts, reusing the
model already loaded in this process.

Other apps join each new service through `on_service_start(hook)` (queueadmin
registers its control from its AppConfig.ready()), so that generation never
imports them.
"""

import asyncio
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from generation.runtime.backends import Backend
from generation.runtime.sampling import SamplingDefaults
from generation.runtime.service import GenerationService
from generation.runtime.startorder import StartOrder
from generation.runtime.types import BackendInfo, Limits

_service: GenerationService | None = None
_start_hooks: list[Callable[[GenerationService], object]] = []


def default_limits() -> Limits:
    """The limits from settings (environment variables)."""
    return Limits(
        max_concurrency=settings.GENERATION_MAX_CONCURRENCY,
        max_queue_size=settings.GENERATION_MAX_QUEUE,
        max_active_per_user=settings.GENERATION_MAX_ACTIVE_PER_USER,
        max_active_api_per_user=settings.GENERATION_MAX_ACTIVE_API_PER_USER,
        queue_timeout_s=settings.GENERATION_QUEUE_TIMEOUT_S,
        max_new_tokens=settings.GENERATION_MAX_NEW_TOKENS,
    )


def configured_model_loader(strategy: str = "batched"):
    """A callable that loads (once per process) the model named by settings.

    It runs in the model thread, and sets torch's thread count as
    GENERATION_TORCH_THREADS says (generation.runtime.threads): an integer
    before the load (with several processes on one host, each using every
    core, their threads fight over the cores and a decode step gets many
    times slower); "auto" after it, measured on the `strategy` engine the
    first time on this machine (seconds, logged) and read from the model
    cache folder later, so the service is ready only once it is set.
    """

    def load():
        # The model stack is imported here, in the model thread, so that
        # importing the web app (every manage.py command, every page) does not
        # import torch and transformers, which takes seconds.
        from generation.runtime import threads
        from generation.runtime.loading import shared_model

        threads.force(settings.GENERATION_TORCH_THREADS)
        loaded = shared_model(
            settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
        )
        threads.settle(settings.GENERATION_TORCH_THREADS, loaded, settings.GENERATION_CACHE_DIR, strategy)
        return loaded

    return load


def sampling_overrides() -> SamplingDefaults:
    """The operator's sampling values (GENERATION_TEMPERATURE, GENERATION_TOP_P,
    GENERATION_TOP_K, GENERATION_REPETITION_PENALTY): a partial layer that
    wins over the model's own defaults; unset ones defer to the model."""
    return SamplingDefaults.partial(
        "settings",
        temperature=settings.GENERATION_TEMPERATURE,
        top_p=settings.GENERATION_TOP_P,
        top_k=settings.GENERATION_TOP_K,
        repetition_penalty=settings.GENERATION_REPETITION_PENALTY,
    )


def _local_backend() -> Backend:
    from generation.runtime.backends.local import LocalBackend

    return LocalBackend(configured_model_loader(), sampling=sampling_overrides())


def _openai_backend() -> Backend:
    from generation.runtime.backends.openai import OpenAIBackend

    return OpenAIBackend()


# GENERATION_BACKEND → a factory of the configured backend; each factory
# reads its own settings. The one place a backend is chosen.
BACKENDS: dict[str, Callable[[], Backend]] = {
    "local": _local_backend,
    "openai": _openai_backend,
}


def make_backend() -> Backend:
    """The backend settings.GENERATION_BACKEND names; ImproperlyConfigured for
    an unknown name."""
    name = settings.GENERATION_BACKEND
    try:
        factory = BACKENDS[name]
    except KeyError:
        choices = ", ".join(sorted(BACKENDS))
        raise ImproperlyConfigured(f"GENERATION_BACKEND={name!r} is not one of: {choices}.") from None
    return factory()


def make_site_queue(service: GenerationService):
    """The site-wide queue for `service` (a SiteQueue on a RedisAdmission)
    when REDIS_URL is set and GENERATION_SITE_QUEUE is on; else None, and
    the service keeps its own queue and cap. Redis is not contacted here."""
    if not (settings.REDIS_URL and settings.GENERATION_SITE_QUEUE):
        return None
    from generation.runtime.admission import RedisAdmission
    from generation.runtime.sitequeue import SiteQueue

    # Short timeouts: a Redis that does not answer must send the process
    # to its own queue within a second or two, not after redis-py's default.
    admission = RedisAdmission.from_url(
        settings.REDIS_URL,
        timeout_s=settings.GENERATION_ADMISSION_TIMEOUT_S,
        prefix=settings.GENERATION_ADMISSION_PREFIX,
        lease_s=settings.GENERATION_ADMISSION_LEASE_S,
        half_life_s=settings.GENERATION_FAIR_SHARE_HALF_LIFE_S,
    )
    return SiteQueue(service, admission, process=service.worker_name)


def on_service_start(hook: Callable[[GenerationService], object]) -> None:
    """Call `hook(service)` for every service this registry starts, inside
    its loop, right after `start()`. Registered once, at app load; a hook
    registered twice runs once."""
    if hook not in _start_hooks:
        _start_hooks.append(hook)


def running_backend_info() -> BackendInfo | None:
    """What this process's service last heard from its backend (its
    `backend_info`: the engine's model and context once ready), or None
    when no service has started here. Read-only; callable from any thread
    (a sync view reads it for the console's bound on the reply budget)."""
    service = _service
    return service.backend_info if service is not None else None


def get_service() -> GenerationService:
    """Return this process's service, starting it in the running loop if needed."""
    global _service
    loop = asyncio.get_running_loop()
    if _service is None or _service.loop is not loop:
        if _service is not None:
            _service.stop()
        _service = GenerationService(
            backend=make_backend(),
            limits=default_limits(),
            process_max_concurrency=settings.GENERATION_PROCESS_MAX_CONCURRENCY,
            start_order=StartOrder(half_life_s=settings.GENERATION_FAIR_SHARE_HALF_LIFE_S),
        )
        _service.site = make_site_queue(_service)
        _service.start()
        if _service.site is not None:
            _service.site.start()
        for hook in _start_hooks:
            hook(_service)
    return _service
