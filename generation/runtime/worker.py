"""The model thread: the only place where the model and tokenizer run.

The service hands admitted requests and cancellations over through
`ModelWorker.admit` and `ModelWorker.cancel`; the thread applies them at the
next step boundary, runs one engine step, and reports what happened back to
the service with ONE `deliver` call per step (the typed reports of
generation.runtime.types); a whole prefill, and (interleave engine) a
prefill chunk that yields a first token, report in a call of their own, so
that no token waits for a later forward pass. The ragged engine prefills
chunks inside its step: their first tokens come with the step's reports. The event loop thus never waits on a forward pass or a
tokenizer call. generation.runtime.backends.local wraps it as the
`local` backend.
"""

import dataclasses
import gc
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from generation.runtime.allocator import set_mmap_threshold
from generation.runtime.detokenizer import IncrementalDetokenizer
from generation.runtime.prompt import PromptTooLong, build_prompt, prepare_tokenizer
from generation.runtime.sampling import FALLBACK, SamplingDefaults
from generation.runtime.types import (
    BackendFailed,
    BackendInfo,
    BackendReady,
    ErrorCode,
    FinishReason,
    Report,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    TextDelta,
)

if TYPE_CHECKING:  # the model stack is imported in the model thread only
    from generation.runtime.loading import LoadedModel

logger = logging.getLogger(__name__)

# The `local` backend's BackendInfo before the model is loaded.
LOCAL_INFO = BackendInfo(kind="local", host="in-process")
# More precise than ErrorCode.INTERNAL's words: the model itself failed.
MODEL_FAILED = "The model failed on this reply. Please try again."


def stop_token_ids(loaded: "LoadedModel") -> set[int]:
    """EOS ids of the model plus the chat template's end-of-turn token."""
    ids = set()
    for candidate in (loaded.model.generation_config.eos_token_id, loaded.tokenizer.eos_token_id):
        if isinstance(candidate, list):
            ids.update(candidate)
        elif candidate is not None:
            ids.add(candidate)
    end_of_turn = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_of_turn is not None and end_of_turn != loaded.tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return ids


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the garbage collector's view; called
    once the model is loaded.

    torch, transformers, Django and the model leave some 400,000 objects that
    live as long as the process. A full (generation 2) collection walks them
    all: 250-350 ms on this project's 2-core machine, with the GIL held, so
    every stream stalls for that long, a few times a minute. `gc.freeze()`
    (Python 3.7+, see the gc module docs) puts them in the permanent
    generation, so later collections walk only what came after.
    """
    gc.collect()
    gc.freeze()


class ModelWorker:
    """Owns the model thread, its engine, and one detokenizer per sequence.

    `mmap_threshold_bytes`: the C allocator's mmap threshold, set as the
    thread starts (generation.runtime.allocator; 0: glibc's default)."""

    def __init__(
        self,
        load: Callable[[], "LoadedModel"],
        deliver: Callable[[list[Report]], None],
        strategy: str,
        overrides: SamplingDefaults | None = None,
        prefill_chunk_tokens: int = 0,
        prefix_cache_bytes: int = 0,
        prefill_policy: str = "fixed",
        prefill_stretch: float = 2.0,
        mmap_threshold_bytes: int = 0,
    ):
        self._load = load
        # The operator's GENERATION_* sampling values, over the model's own.
        self._overrides = overrides or SamplingDefaults.partial("settings")
        self._deliver = deliver
        self._strategy = strategy
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._prefix_cache_bytes = prefix_cache_bytes
        # The ragged engine's prefill plan (generation.runtime.prefillplan).
        self._prefill_policy = prefill_policy
        self._prefill_stretch = prefill_stretch
        self._mmap_threshold_bytes = mmap_threshold_bytes
        self._wake = threading.Condition()
        self._admitted: list = []
        self._cancelled: set[str] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="generation-model", daemon=True)
        self.context_tokens = 0
        # What the status shows: kind and host now, the model once loaded.
        self.info = LOCAL_INFO

    def start(self) -> None:
        """Start the thread; it loads the model first."""
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """End the thread after its current step (or its model load) and wait
        for it, so that no forward pass outlives the process's shutdown."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def admit(self, request) -> None:
        """Hand an admitted request to the thread (called from the loop)."""
        with self._wake:
            self._admitted.append(request)
            self._wake.notify()

    def cancel(self, request_id: str) -> None:
        """Ask the thread to stop a running request before its next step."""
        with self._wake:
            self._cancelled.add(request_id)
            self._wake.notify()

    def _run(self) -> None:
        try:
            # Imported here, in the model thread: torch takes seconds to import,
            # and every manage.py command and web page would otherwise pay for it.
            from generation.runtime.engine import make_engine

            # Before the load: its transients go back to the system too.
            set_mmap_threshold(self._mmap_threshold_bytes)
            loaded = self._load()
            prepare_tokenizer(loaded.tokenizer)
            freeze_long_lived_objects()
        except Exception as error:  # any failure leaves the service unable to serve
            logger.exception("Model load failed")
            self._deliver([BackendFailed(message=f"The model could not be loaded: {error}")])
            return
        self.context_tokens = loaded.model.config.max_position_embeddings
        defaults = self._overrides.layered(loaded.sampling, FALLBACK)
        logger.info("Sampling defaults of %s: %s", loaded.name, defaults.describe())
        engine = make_engine(
            self._strategy,
            loaded.model,
            stop_token_ids(loaded),
            defaults,
            prefill_chunk_tokens=self._prefill_chunk_tokens,
            prefix_cache_bytes=self._prefix_cache_bytes,
            prefill_policy=self._prefill_policy,
            prefill_stretch=self._prefill_stretch,
        )
        detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.info = dataclasses.replace(LOCAL_INFO, model=loaded.name, context_tokens=self.context_tokens)
        self._deliver([BackendReady(info=self.info)])
        while True:
            with self._wake:
                while not (self._stopping or self._admitted or self._cancelled or len(engine)):
                    self._wake.wait()
                if self._stopping:
                    return
                admitted, self._admitted = self._admitted, []
                cancelled, self._cancelled = self._cancelled, set()
            # Each prefill reports at once: a burst of arrivals should not hold
            # the first one's first token until the last one is prefilled.
            for request in admitted:
                self._deliver(self._prefill(engine, loaded.tokenizer, detokenizers, request))
            reports: list[Report] = []
            # After the admissions, so that a request cancelled right after its
            # admission is found; one that already finished is simply gone.
            for request_id in cancelled:
                if request_id in detokenizers:
                    engine.remove(request_id)
                    reports += self._finish(detokenizers, request_id, FinishReason.CANCELLED)
            if len(engine):
                try:
                    outputs = engine.step()
                except Exception:
                    logger.exception("Forward pass failed; failing the %d requests in the batch", len(engine))
                    for request_id in list(engine.sequences):
                        detokenizers.pop(request_id, None)
                        reports.append(RequestFailed(request_id, ErrorCode.INTERNAL, MODEL_FAILED))
                    engine.clear()
                else:
                    stopped: list[str] = []
                    for output in outputs:
                        reports += self._token(detokenizers, output, stopped)
                    engine.remove(*stopped)
            if reports:
                self._deliver(reports)
            # Chunked prefill, after the decode step and its reports: at most
            # one chunk's worth of prompt tokens per loop, oldest prompt first,
            # so that a running reply waits about one chunk between two tokens
            # however long the prompt, while short prompts that arrived
            # together still start in the same loop.
            # (The ragged engine prefills within its step: nothing to do here.)
            budget = 0 if engine.prefill_in_step else engine.prefill_chunk_tokens
            while budget > 0 and (request_id := engine.next_prefill()) is not None:
                size = min(budget, engine.prefill_left(request_id))
                budget -= size
                chunk_reports = self._first_token(
                    engine, detokenizers, request_id, lambda size=size: engine.prefill_step(size)
                )
                if chunk_reports:
                    self._deliver(chunk_reports)

    def _prefill(self, engine, tokenizer, detokenizers, request) -> list[Report]:
        try:
            prompt = build_prompt(
                tokenizer, request.messages, self.context_tokens, request.params.max_new_tokens
            )
        except PromptTooLong as error:
            return [RequestFailed(request.id, ErrorCode.TOO_LONG, f"{error} Shorten it and send it again.")]
        started = RequestStarted(
            request_id=request.id,
            prompt_tokens=len(prompt.ids),
            dropped_messages=prompt.dropped_messages,
            max_new_tokens=prompt.max_new_tokens,
            budget_shrunk=prompt.budget_shrunk,
        )
        params = dataclasses.replace(request.params, max_new_tokens=prompt.max_new_tokens)
        detokenizers[request.id] = IncrementalDetokenizer(tokenizer, params.stop)
        engine.last_reused_tokens = 0  # a failed add leaves no stale count
        first = self._first_token(
            engine, detokenizers, request.id, lambda: engine.add(request.id, prompt.ids, params)
        )
        # Reported before the first token, though the prefix cache was only
        # searched by `add`.
        return [dataclasses.replace(started, cached_tokens=engine.last_reused_tokens), *first]

    def _first_token(self, engine, detokenizers, request_id: str, prefill: Callable) -> list[Report]:
        """Run `prefill` (a whole prefill, or one chunk of `request_id`'s) and
        report the first token it returns, if any; a failure fails that
        request alone."""
        try:
            output = prefill()
        except Exception:
            logger.exception("Prefill failed for request %s", request_id)
            engine.remove(request_id)
            detokenizers.pop(request_id)
            return [RequestFailed(request_id, ErrorCode.INTERNAL, MODEL_FAILED)]
        if output is None:  # chunked: the prompt's first chunk waits for the next prefill_step
            return []
        stopped: list[str] = []
        reports = self._token(detokenizers, output, stopped)
        engine.remove(*stopped)
        return reports

    def _token(self, detokenizers, output, stopped: list[str]) -> list[Report]:
        """The reports of one generated token. A token that completes one of
        the request's stop strings ends the reply with `stop`; when the engine
        still runs that sequence, its id is added to `stopped`, for the
        caller to remove from the engine (all of a step's at once)."""
        detokenizer = detokenizers[output.seq_id]
        delta = detokenizer.push(output.token_id)
        reports: list[Report] = [TextDelta(output.seq_id, delta, 1)]
        reason = output.finish_reason
        if detokenizer.stopped:
            if reason is None:
                stopped.append(output.seq_id)
            reason = FinishReason.STOP
        if reason:
            reports += self._finish(detokenizers, output.seq_id, FinishReason(reason))
        return reports

    @staticmethod
    def _finish(detokenizers, request_id: str, reason: FinishReason) -> list[Report]:
        # Complete text still held back goes out; the bytes of a character the
        # reply stopped in the middle of are dropped, never sent as U+FFFD.
        rest = detokenizers.pop(request_id).flush()
        return [*([TextDelta(request_id, rest, 0)] if rest else []), RequestFinished(request_id, reason)]
