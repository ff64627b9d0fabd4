"""When will a waiting reply start? The estimate `queued` events carry (`eta_s`).

Modelled on Gradio's queue ETA (gradio/queueing.py, `Queue.send_estimation`
and `update_estimation`): Gradio keeps the mean run time A of the events it
has processed and, for the event at 0-based rank r with C workers, sends
`rank_eta = r * A/C + A`, plus `A/C` "for a thread to get empty" when every
worker is busy. That is the time until the event *ends*. We want the time
until the reply *starts*, so with `position` p (1 = next), cap C and mean run
time A of the recent completed replies:

    eta = slot_wait + (p - 1) * A / C

    slot_wait = min over the running replies of max(A - elapsed, 0)
                when this process sees C replies running (all its slots);
                A / C otherwise (Gradio's "time for a worker to get empty",
                used when the running replies are not all visible here: the
                site queue, where other processes hold slots, or an engine
                that asked us to wait).

A "run time" is a completed reply's time in its slot (started → finished,
the records' `started_at` to `finished_at`), kept in a rolling window of the
last `WINDOW` replies finished in this process (`RunTimes`, fed by the
service as replies complete); queueadmin seeds it when a service starts with
the site's last completed replies from before (its GenerationRecords), so
that a restart does not forget. There is no estimate (None) until
`MIN_SAMPLES` are known. Estimates are rounded (`rounded`) so that a
page saying "about" never shows false precision.
"""

import collections
import math

WINDOW = 20
"""How many recent run times the mean is taken over."""

MIN_SAMPLES = 3
"""Finished replies needed before there is an estimate."""


class RunTimes:
    """A rolling window of recent run times, in seconds (on the loop only)."""

    def __init__(self, window: int = WINDOW, min_samples: int = MIN_SAMPLES):
        self._seconds: collections.deque[float] = collections.deque(maxlen=window)
        self.min_samples = min_samples

    def add(self, seconds: float) -> None:
        """Remember one completed reply's run time (negative ones are ignored)."""
        if seconds >= 0:
            self._seconds.append(seconds)

    def seed(self, older: list[float]) -> None:
        """Put run times that finished before any added here (oldest first:
        the site's records, read at start) ahead of those; the window keeps
        the newest."""
        newer = list(self._seconds)
        self._seconds.clear()
        self._seconds.extend([s for s in older if s >= 0] + newer)

    def mean(self) -> float | None:
        """The mean run time in seconds, or None with fewer than `min_samples`."""
        if len(self._seconds) < self.min_samples:
            return None
        return sum(self._seconds) / len(self._seconds)


def start_in(*, position: int, capacity: int, mean_s: float, running_elapsed_s: list[float]) -> float:
    """Seconds until the reply at `position` (1 = next) starts, by the
    formula in this module's docstring. `capacity` is C (at least 1 is
    used), `mean_s` is A, `running_elapsed_s` how long each reply running
    here has run so far."""
    capacity = max(capacity, 1)
    if len(running_elapsed_s) >= capacity:
        slot_wait = min(max(mean_s - elapsed, 0.0) for elapsed in running_elapsed_s)
    else:
        slot_wait = mean_s / capacity
    return slot_wait + (max(position, 1) - 1) * mean_s / capacity


def rounded(seconds: float) -> int:
    """An estimate as a person should read it after "about": whole seconds
    up to 10 s (at least 1), then steps of 5 s up to a minute, 10 s up to
    five minutes, and whole minutes beyond."""
    if seconds <= 10:
        return max(math.ceil(seconds), 1)
    for limit, step in ((60, 5), (300, 10)):
        if seconds <= limit:
            return int(round(seconds / step) * step)
    return int(round(seconds / 60) * 60)
