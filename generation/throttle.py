"""A token bucket, to bound how fast one socket's frames are handled.

Used by the chat consumer (generation.consumers) on every client frame; it
lives on the event loop and is never shared between sockets, so it needs no
lock.
"""

import time


class TokenBucket:
    """Allow bursts of up to `burst` events, refilled at `rate` per second.

    `take()` is called once per event and answers whether it may go ahead;
    an event it refuses costs nothing more than the call. `clock` (seconds,
    monotonic) is there for tests.
    """

    def __init__(self, *, burst: int, rate: float, clock=time.monotonic):
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self) -> bool:
        """Spend one token if there is one; False means over the limit."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
