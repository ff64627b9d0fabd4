"""A token bucket, to bound how fast one socket's frames are handled.

Used by the chat consumer (generation.consumers) and the console consumer
(queueadmin.consumers) on every client frame; a bucket lives on the event
loop and is never shared between sockets, so it needs no lock.
"""

import time
from collections.abc import Awaitable, Callable


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


def limit_frames(
    receive: Callable[[], Awaitable[dict]],
    *,
    burst: int,
    rate: float,
    on_drop: Callable[[dict], Awaitable[None]],
) -> Callable[[], Awaitable[dict]]:
    """Wrap a socket's ASGI `receive` so that client frames over `burst` /
    `rate` (frames, frames per second) never reach the consumer: each one is
    handed to `on_drop(message)` instead. Called once per socket, before
    Channels dispatches anything, so a flood costs microseconds a frame (no
    database housekeeping hop each) and the close queued behind it is seen
    at once. Connect and disconnect messages always pass."""
    bucket = TokenBucket(burst=burst, rate=rate)

    async def receive_within_limit() -> dict:
        while True:
            message = await receive()
            if message["type"] != "websocket.receive" or bucket.take():
                return message
            await on_drop(message)

    return receive_within_limit
