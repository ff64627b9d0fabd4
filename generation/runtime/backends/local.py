"""The `local` backend: the in-process model thread and its batched engine.

The embedded default. It wraps `ModelWorker` (generation.runtime.worker),
which loads the model in its own thread, runs one engine step at a time and
reports each step's typed reports through `deliver`.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

from generation.runtime.backends import Backend, Deliver
from generation.runtime.types import BackendInfo
from generation.runtime.worker import LOCAL_INFO, ModelWorker

if TYPE_CHECKING:  # loading imports torch, which only the model thread needs
    from generation.runtime.loading import LoadedModel
    from generation.runtime.requests import GenerationRequest
    from generation.runtime.sampling import SamplingDefaults


class LocalBackend(Backend):
    """Generates in this process. `load` returns the model (called in the
    model thread); `strategy` is the engine's: "batched" (continuous
    batching) or "interleave" (the one-at-a-time baseline). `sampling`: the
    operator's sampling values (GENERATION_TEMPERATURE and the like), which
    win over the model's own defaults; None fields defer to the model.
    `prefill_chunk_tokens`: the engine's prefill chunk (None: the setting
    GENERATION_PREFILL_CHUNK_TOKENS, 0: whole prompts). `prefix_cache_mb`:
    the budget of reusable KV (None: GENERATION_PREFIX_CACHE_MB, 0: no
    prefix reuse). The prefill policy and its stretch are the settings
    GENERATION_PREFILL_POLICY and GENERATION_PREFILL_STEP_STRETCH; the C allocator's mmap threshold is
    GENERATION_MALLOC_MMAP_THRESHOLD_KB (generation.runtime.allocator)."""

    kind = "local"

    def __init__(
        self,
        load: Callable[[], "LoadedModel"],
        strategy: str = "batched",
        sampling: "SamplingDefaults | None" = None,
        prefill_chunk_tokens: int | None = None,
        prefix_cache_mb: int | None = None,
    ):
        from django.conf import settings

        self._load = load
        self._strategy = strategy
        self._sampling = sampling
        # None: GENERATION_PREFILL_CHUNK_TOKENS; 0 prefills each prompt whole.
        self._prefill_chunk_tokens = (
            settings.GENERATION_PREFILL_CHUNK_TOKENS if prefill_chunk_tokens is None else prefill_chunk_tokens
        )
        self._prefix_cache_mb = (
            settings.GENERATION_PREFIX_CACHE_MB if prefix_cache_mb is None else prefix_cache_mb
        )
        self._prefill_policy = settings.GENERATION_PREFILL_POLICY
        self._prefill_stretch = settings.GENERATION_PREFILL_STEP_STRETCH
        self._mmap_threshold_bytes = settings.GENERATION_MALLOC_MMAP_THRESHOLD_KB * 1024
        self._worker: ModelWorker | None = None

    def start(self, deliver: Deliver) -> None:
        """Start the model thread; it reports BackendReady once loaded."""
        self._worker = ModelWorker(
            self._load,
            deliver,
            self._strategy,
            self._sampling,
            prefill_chunk_tokens=self._prefill_chunk_tokens,
            prefix_cache_bytes=self._prefix_cache_mb * 2**20,
            prefill_policy=self._prefill_policy,
            prefill_stretch=self._prefill_stretch,
            mmap_threshold_bytes=self._mmap_threshold_bytes,
        )
        self._worker.start()

    def admit(self, request: "GenerationRequest") -> None:
        """Hand `request` to the model thread, which prefills it at its next step."""
        self._worker.admit(request)

    def cancel(self, request_id: str) -> None:
        """Ask the model thread to stop `request_id` before its next step."""
        self._worker.cancel(request_id)

    def stop(self) -> None:
        """End the model thread after its current step (or model load) and
        wait for it, at most 30 s: this blocks the loop, which the interface
        allows for `stop` alone (shutdown)."""
        if self._worker is not None:
            self._worker.stop()

    def info(self) -> BackendInfo:
        """In-process; the model's name and context once loaded."""
        return self._worker.info if self._worker is not None else LOCAL_INFO
