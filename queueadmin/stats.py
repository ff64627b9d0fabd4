"""Latency percentiles and token counts of one generation service.

Fed by the service's record listener (one call per finished request) and
read by the control's publish tick; everything here runs on the event loop
and only touches memory.
"""

import collections
import time

from generation.runtime.types import RequestRecord
from generation.stats import percentile, summarize

__all__ = ["LatencyWindow", "ServiceStats", "percentile", "summarize"]

WINDOW_S = 300  # p50/p95 cover the last 5 minutes
MAX_SAMPLES = 2000  # bounds memory and the size of published statuses


class LatencyWindow:
    """Millisecond samples of the last WINDOW_S seconds, newest last."""

    def __init__(self):
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=MAX_SAMPLES)

    def add(self, seconds: float) -> None:
        """Record one sample, given in seconds."""
        self._samples.append((time.monotonic(), round(max(seconds, 0) * 1000)))

    def values(self) -> list[int]:
        """The samples still inside the window, in milliseconds."""
        horizon = time.monotonic() - WINDOW_S
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        return [value for _, value in self._samples]


class ServiceStats:
    """What the console and the snapshots need beyond `GenerationService.status()`."""

    def __init__(self):
        self.ttft = LatencyWindow()
        self.queue_wait = LatencyWindow()
        self.finished_tokens = 0

    def observe(self, record: RequestRecord) -> None:
        """Take one finished request's record into account."""
        if record.started_at is not None:
            self.queue_wait.add(record.started_at - record.enqueued_at)
        if record.first_token_at is not None:
            self.ttft.add(record.first_token_at - record.enqueued_at)
        self.finished_tokens += record.completion_tokens

    def tokens_total(self, service) -> int:
        """Tokens generated so far: finished requests' plus the running ones'.

        A request leaves `running` in the same loop callback that hands its
        record to `observe`, so a token is never counted twice or lost.
        """
        return self.finished_tokens + sum(r.completion_tokens for r in service.running.values())

    def latency(self) -> tuple[dict, dict]:
        """(summaries, raw samples) of time to first token and queue wait, in ms.

        The samples travel with the published status so that the console can
        compute cluster-wide percentiles; percentiles do not add up.
        """
        ttft, queue_wait = self.ttft.values(), self.queue_wait.values()
        summaries = {"ttft_ms": summarize(ttft), "queue_wait_ms": summarize(queue_wait)}
        return summaries, {"ttft_ms": ttft, "queue_wait_ms": queue_wait}
