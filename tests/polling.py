"""Waiting for a condition in tests, without sleeping longer than needed."""

import asyncio
import time


async def wait_for(predicate, timeout: float = 10, interval: float = 0.05):
    """Poll `predicate` (sync or async) on the loop until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(interval)


def poll(predicate, timeout: float, interval: float = 0.05):
    """Poll `predicate` from sync code until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)
