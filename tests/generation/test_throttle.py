"""The token bucket that bounds a chat socket's frames."""

from generation.throttle import TokenBucket


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_burst_then_the_refill_rate():
    """A full bucket lets `burst` events through at once, then `rate` a second."""
    clock = FakeClock()
    bucket = TokenBucket(burst=20, rate=10.0, clock=clock)
    assert sum(bucket.take() for _ in range(100)) == 20
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(100)) == 5
    clock.now += 60  # an idle socket gets its burst back, never more
    assert sum(bucket.take() for _ in range(100)) == 20
