"""A token bucket, to bound how fast one socket's frames are handled.

Used by the chat consumer (generation.consumers) and the console consumer
(queueadmin.consumers) on every client frame; a bucket lives on the event
loop and is never shared between sockets, so it needs no lock.
"""

import time
from collections.abc import Awaitable, Callable

# Client frames per socket, as a token bucket. A person sends a message, a
# stop or a console Cancel now and then, so a burst of 20 and 10 a second
# never touch the page; a flood is dropped as it arrives instead of queuing
# work, and the socket's close, behind it.
FRAME_BURST = 20
FRAME_RATE_PER_S = 10.0
# However many frames are dropped, at most one error says so per interval.
SLOW_DOWN_NOTICE_INTERVAL_S = 1.0
SLOW_DOWN = "Too many frames: slow down. Frames over the limit are dropped."


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


class Notices:
    """Lets one notice through per `interval` seconds; `due()` is asked each
    time a frame is dropped, and answers whether to tell the client now."""

    def __init__(self, interval: float = SLOW_DOWN_NOTICE_INTERVAL_S, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self.next_at = 0.0

    def due(self) -> bool:
        """True at most once per interval."""
        now = self.clock()
        if now < self.next_at:
            return False
        self.next_at = now + self.interval
        return True


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
