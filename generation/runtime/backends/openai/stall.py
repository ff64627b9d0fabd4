"""Noticing an engine that went quiet without closing its connections.

vLLM stopped with SIGTERM closes its listening socket and then waits for the
open connections to close, sending nothing on them: the streams in flight
hear nothing until the read timeout (GENERATION_OPENAI_READ_TIMEOUT_S,
120 s by default) while the console still says ready. A stream that is
merely slow (a long prompt's prefill, a busy engine) looks the same from
inside the stream. So while requests are in flight and one of them has been
silent for STALL_PROBE_S, the watch asks the engine GET /models (within the
connect timeout): an engine that cannot be reached is lost at once; one that
answers is just slow, and nothing changes. So is one that takes the
connection but does not answer in time: vLLM's server on a busy machine
stalls for seconds, its streams and GET /models alike, and then goes on
(the streams' own read timeout ends one that never does). One watch per
backend, one probe at a time, at most one every STALL_PROBE_S, however many
streams are quiet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection

import openai

from .remote import EngineUnusable, is_late_answer

# Seconds a stream may stay silent before the engine is asked whether it is
# still there. Longer than the gap between two tokens of any engine that is
# working (tens of milliseconds; a CPU vLLM's prefill of a long prompt takes
# a few seconds, and then the probe simply succeeds); short enough that a
# person whose reply stopped hears why within a few seconds.
STALL_PROBE_S = 3.0


class StallWatch:
    """Probes the engine when a stream in flight has gone quiet.

    `in_flight` returns the ids of the requests in flight now; `probe` asks
    the engine (raising openai.APIConnectionError when it cannot be
    reached); `lost` is called with that error, once, and the watch ends.
    Call `heard(request_id)` when a request is admitted and whenever its
    stream says something. Runs on the backend's loop; ends by itself when
    nothing is in flight, and starts again with the next `heard`.
    """

    def __init__(
        self,
        in_flight: Callable[[], Collection[str]],
        probe: Callable[[], Awaitable[object]],
        lost: Callable[[Exception], None],
    ):
        self._in_flight, self._probe, self._lost = in_flight, probe, lost
        self._heard: dict[str, float] = {}  # request id -> when its stream last said something
        self._task: asyncio.Task | None = None

    def heard(self, request_id: str) -> None:
        """`request_id`'s stream is alive now (admitted, or a chunk came)."""
        self._heard[request_id] = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="openai-stall-watch")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._heard.clear()

    async def _watch(self) -> None:
        probed = float("-inf")
        while True:
            await asyncio.sleep(min(1.0, STALL_PROBE_S / 4))
            running = self._in_flight()
            self._heard = {rid: at for rid, at in self._heard.items() if rid in running}
            if not self._heard:
                return
            now = time.monotonic()
            if now - min(self._heard.values()) < STALL_PROBE_S or now - probed < STALL_PROBE_S:
                continue
            probed = now
            try:
                await self._probe()
            except openai.APIConnectionError as error:
                if is_late_answer(error):
                    continue  # it took the connection: there, busy
                self._heard.clear()  # refused, unresolvable, no connection in time, closed unanswered
                self._lost(error)
                return
            except (openai.APIError, EngineUnusable):
                pass  # it answered, if not as we like: it is there, and the stream's own timeout stands
