"""The `openai` backend: replies come from a remote OpenAI-compatible engine
(vLLM, SGLang, TGI, Ollama, llama.cpp's server), one streamed
chat-completions call per admitted request, one asyncio task each.

chatsite keeps its own queue, cap, positions and cancel in front of the
engine: the service admits at most `max_concurrency` requests, and each is
in flight at the engine until it ends, so the engine's own queue stays
empty. How the engine's answers map onto reports:

- 200 and a stream: RequestStarted, TextDeltas, RequestFinished (the usage
  chunk's counts win over the counted chunks).
- 429 or 503 (busy): RequestDeferred for its Retry-After; the request goes
  back to the head of our queue.
- No connection (refused, unresolvable, connect timeout): the request fails
  `unavailable`, and so do the others running; BackendFailed naming the URL;
  then GET /models every PROBE_INTERVAL_S until the engine answers, and
  BackendReady. A connection that breaks or stalls mid-reply fails that
  request `unavailable` and probes once: if the engine is gone, the same.
  An error event saying the engine died (vLLM's EngineDeadError, sent when
  it is stopped mid-reply) fails the requests `unavailable` and probes on.
  A stream silent for a few seconds makes the engine be probed too
  (stall.py): an engine stopped with SIGTERM closes its listening socket
  but not the streams, and is lost at once rather than after the read
  timeout.
- A finish reason other than "stop" or "length" (vLLM's "abort"): the
  request fails, `unavailable` for "abort", else `internal` (stream.py).
- 400 about the context length (the engine's chat template counted a few
  tokens more than our tokenizer): that request fails `too_long`.
- Anything else (another HTTP error, invalid JSON, a chunk without
  choices, a body that is not an event stream): that request alone fails
  `internal`, logged with the engine's status and the start of its body.
"""

from __future__ import annotations

import asyncio
import json
import logging

import openai

from generation.runtime.backends import Backend, Deliver
from generation.runtime.prompt import PromptTooLong
from generation.runtime.types import (
    BackendFailed,
    BackendInfo,
    BackendReady,
    ErrorCode,
    FinishReason,
    Report,
    RequestDeferred,
    RequestFailed,
    RequestFinished,
)

from . import remote
from .remote import RemoteConfig
from .stall import StallWatch
from .stream import MalformedStream, UnfinishedReply, stream_reply

logger = logging.getLogger(__name__)

# Seconds between GET /models probes while the engine cannot be used.
PROBE_INTERVAL_S = 2.0
BUSY_STATUSES = (429, 503)


class OpenAIBackend(Backend):
    """A remote OpenAI-compatible engine behind the service's queue. All
    methods run on the service's loop; `config` defaults to the settings."""

    kind = "openai"

    def __init__(self, config: RemoteConfig | None = None):
        self.config = config or RemoteConfig.from_settings()
        self._deliver: Deliver | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._tokenizer = None
        self._sampling = self.config.sampling  # with the model's and the fallback's, once loaded
        self._card: remote.ModelCard | None = None  # None while not ready
        self._failure = "The model server has not been reached yet."
        self._tasks: dict[str, asyncio.Task] = {}  # running requests by id
        self._stalls = StallWatch(lambda: self._tasks, self._probe_once, self._lose_to)
        self._probe: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # engine checks; the loop holds tasks weakly
        self._tokenizer_load: asyncio.Future | None = None
        self._stopped = False

    # Backend interface -----------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        """Load the tokenizer (in a thread) while probing the engine until it
        answers; reports BackendReady, or BackendFailed on the way."""
        self._deliver = deliver
        self._client = remote.async_client(self.config)
        self._probe = asyncio.get_running_loop().create_task(self._connect())

    def admit(self, request) -> None:
        """Stream `request`'s reply in a task of its own."""
        if self._card is None:  # lost after the service last heard we were ready
            self._send(RequestFailed(request.id, ErrorCode.UNAVAILABLE, self._failure))
            return
        task = asyncio.get_running_loop().create_task(self._run(request), name=f"openai-{request.id}")
        self._tasks[request.id] = task
        self._stalls.heard(request.id)

    def cancel(self, request_id: str) -> None:
        """Free the slot now and close the request's HTTP stream."""
        task = self._tasks.pop(request_id, None)
        if task is not None:
            self._send(RequestFinished(request_id, FinishReason.CANCELLED))
            task.cancel()

    def stop(self) -> None:
        """Cancel every request and the probe, and close the client."""
        if self._stopped:
            return
        self._stopped = True
        self._stalls.stop()
        for task in [*self._tasks.values(), *self._background, self._probe]:
            if task is not None:
                task.cancel()
        self._tasks.clear()
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # called off the loop: the sockets close with the process
            return
        if self._client is not None:
            self._spawn(self._client.close())

    def info(self) -> BackendInfo:
        """The engine's URL, and its model and context once it answered."""
        card = self._card
        return BackendInfo(
            kind=self.kind,
            host=self.config.base_url,
            model=card.model if card else self.config.model,
            context_tokens=card.context_tokens if card else 0,
        )

    # Connecting ------------------------------------------------------------

    async def _connect(self) -> None:
        # The tokenizer loads while the engine is probed, so that an engine
        # that is down is reported at once, not after the load.
        self._tokenizer_load = asyncio.ensure_future(asyncio.to_thread(_load_tokenizer, self.config))
        await self._probe_until_ready()

    async def _probe_until_ready(self, reported: str | None = None, wait_s: float = 0.0) -> None:
        """After `wait_s`, GET /models every PROBE_INTERVAL_S until the
        engine answers with a usable model; BackendFailed when the reason
        changes from `reported` (the last one sent); then, once the tokenizer
        is loaded, BackendReady. A tokenizer that cannot load fails the
        backend for good."""
        await asyncio.sleep(wait_s)
        while True:
            try:
                card = await remote.aread_model_card(self._client, self.config)
            except (openai.APIError, remote.EngineUnusable) as error:
                message = remote.unusable_message(self.config, error)
                if message != reported:
                    logger.warning("%s Probing every %g s.", message, PROBE_INTERVAL_S)
                    self._failure = reported = message
                    self._send(BackendFailed(message))
                await asyncio.sleep(PROBE_INTERVAL_S)
                continue
            break
        try:
            self._tokenizer, self._sampling = await self._tokenizer_load
        except Exception as error:
            logger.exception("Cannot load the tokenizer for the openai backend")
            where = self.config.tokenizer or "the bundled model's folder"
            self._failure = f"Cannot load a tokenizer from {where} (GENERATION_OPENAI_TOKENIZER): {error}"
            self._send(BackendFailed(self._failure))
            return
        self._card = card
        if shortfall := remote.context_shortfall(self.config, card):
            logger.warning(shortfall)
        logger.info(
            "Model server %s ready: %s, %d context tokens",
            self.config.base_url,
            card.model,
            card.context_tokens,
        )
        self._send(BackendReady(self.info()))

    async def _check_engine(self) -> None:
        """After a connection broke mid-reply: one probe; if the engine is
        gone, lose it (which probes on until it is back)."""
        try:
            await self._probe_once()
        except (openai.APIError, remote.EngineUnusable) as error:
            self._lose_to(error)

    async def _probe_once(self) -> remote.ModelCard:
        return await remote.aread_model_card(self._client, self.config)

    def _lose_to(self, error: Exception) -> None:
        self._lose(remote.unusable_message(self.config, error))

    def _lose(self, message: str) -> None:
        """The engine cannot be used: fail the running requests, report
        BackendFailed and probe until it is back (once, however many
        requests noticed)."""
        if self._card is None or self._stopped:
            return
        self._card, self._failure = None, message
        running, self._tasks = self._tasks, {}
        reports: list[Report] = [RequestFailed(rid, ErrorCode.UNAVAILABLE, message) for rid in running]
        self._send(*reports, BackendFailed(message))
        for task in running.values():
            task.cancel()
        logger.warning("%s Probing every %g s.", message, PROBE_INTERVAL_S)
        # Not at once: an engine that is shutting down may still answer for a moment.
        self._probe = asyncio.get_running_loop().create_task(
            self._probe_until_ready(reported=message, wait_s=PROBE_INTERVAL_S)
        )

    # Requests --------------------------------------------------------------

    async def _run(self, request) -> None:
        rid = request.id

        def report(item: Report) -> None:
            if self._tasks.get(rid) is not None:  # not cancelled, not lost
                self._stalls.heard(rid)
                self._send(item)

        def end(item: Report) -> None:
            if self._tasks.pop(rid, None) is not None:
                self._send(item)

        try:
            await stream_reply(
                self._client, self._card, self._tokenizer, request, report, sampling=self._sampling
            )
            self._tasks.pop(rid, None)
        except asyncio.CancelledError:
            raise
        except PromptTooLong as error:
            end(RequestFailed(rid, ErrorCode.TOO_LONG, str(error)))
        except openai.APIStatusError as error:
            if error.status_code in BUSY_STATUSES:
                wait = remote.retry_after_s(error.response.headers)
                logger.info(
                    "Model server busy (HTTP %d): request %s waits %g s", error.status_code, rid, wait
                )
                end(RequestDeferred(rid, retry_after_s=wait))
            elif remote.is_context_length_error(error):
                logger.info(
                    "Model server refused request %s as too long: %s", rid, remote.excerpt(error.response)
                )
                end(RequestFailed(rid, ErrorCode.TOO_LONG, ErrorCode.TOO_LONG.text))
            else:
                self._internal(rid, f"HTTP {error.status_code}", remote.excerpt(error.response), end)
        except openai.APIConnectionError as error:
            if remote.is_connect_error(error):
                message = remote.unusable_message(self.config, error)
                end(RequestFailed(rid, ErrorCode.UNAVAILABLE, message))
                self._lose(message)
            else:  # it broke or stalled mid-reply: is the engine still there?
                reason = remote.connection_reason(error, self.config)
                message = f"The model server at {self.config.base_url} stopped answering ({reason})."
                end(RequestFailed(rid, ErrorCode.UNAVAILABLE, message))
                if self._card is not None:
                    self._spawn(self._check_engine())
        except UnfinishedReply as error:
            logger.warning("Model server %s ended request %s short: %s", self.config.base_url, rid, error)
            message = f"The model server at {self.config.base_url} ended the reply unfinished ({error})."
            end(RequestFailed(rid, error.code, message))
        except MalformedStream as error:
            self._internal(rid, str(error), remote.excerpt(None, error.body), end)
        except json.JSONDecodeError as error:
            self._internal(
                rid, f"invalid JSON in the stream ({error.msg})", remote.excerpt(None, error.doc), end
            )
        except openai.APIError as error:
            if remote.is_engine_dead_error(error):  # vLLM stopped (SIGTERM) or crashed mid-reply
                message = f"The model server at {self.config.base_url} stopped ({error.message})."
                end(RequestFailed(rid, ErrorCode.UNAVAILABLE, message))
                self._lose(message)
                return
            self._internal(rid, f"an error in the stream: {error.message}", repr(error.body)[:500], end)
        except Exception:
            logger.exception("Request %s to the model server %s failed", rid, self.config.base_url)
            end(RequestFailed(rid, ErrorCode.INTERNAL, ErrorCode.INTERNAL.text))

    def _internal(self, rid: str, what: str, body: str, end) -> None:
        """Fail one request `internal` for an answer that is not a reply
        (a malformed stream, an HTTP error), logging what came."""
        logger.error(
            "Model server %s gave request %s an answer that is not a reply: %s. Response: %s",
            self.config.base_url,
            rid,
            what,
            body,
        )
        end(RequestFailed(rid, ErrorCode.INTERNAL, ErrorCode.INTERNAL.text))

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _send(self, *reports: Report) -> None:
        if not self._stopped and self._deliver is not None:
            self._deliver(list(reports))


def _load_tokenizer(config):
    """The tokenizer and the sampling defaults, both read from the
    tokenizer's folder (in a thread); the defaults are logged with their sources."""
    tokenizer = remote.load_tokenizer(config)
    sampling = remote.sampling_defaults(config)
    logger.info("Sampling defaults sent to the engine: %s", sampling.describe())
    return tokenizer, sampling
