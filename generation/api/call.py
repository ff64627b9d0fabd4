"""One API request in flight: its events in one inbox, and what stops it.

The view reads a request's events from `ApiCall.next`, which also delivers
`REVOKED` when the request's key is revoked or its owner deactivated while
it waits or runs; `close()` cancels the request unless it has ended (a
queued one leaves the queue, a running one frees its slot), exactly as a
closed chat socket does. Two things report a revocation, whichever is
first:

- the channel-layer event `ApiKey.REVOKED_EVENT` sent to the key's group
  after a revoke commits (generation.services.api_key_revoke): at once, on
  every process that shares the layer;
- the socket watch (generation.watch), which reads the database every half
  second: a deactivated account, and a revoke whose event was lost (the
  channel layer's Redis down, or the revoke landing before the group was
  joined).

Subscribing never delays the request: the group is joined by a background
task, since a channel layer whose Redis does not answer may hang for
seconds.
"""

import asyncio
import contextlib
import logging

from channels.layers import get_channel_layer

from generation import watch
from generation.models import ApiKey
from generation.runtime.requests import GenerationHandle
from generation.runtime.types import Event

logger = logging.getLogger(__name__)


class Revoked:
    """The inbox's word that the key was revoked or its owner deactivated."""

    terminal = True

    def __repr__(self) -> str:
        return "REVOKED"


REVOKED = Revoked()

# Tasks the loop holds only weakly: a request's event pump runs on after
# close() until the request's terminal event, and a group is left after it.
_background: set[asyncio.Task] = set()


def _spawn(coroutine) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class ApiCall:
    """The events of `handle`, submitted for `api_key`, and their watchers.
    Create it on the loop right after submitting; `close()` it however the
    request's reader ends (it is idempotent)."""

    def __init__(self, handle: GenerationHandle, api_key: ApiKey):
        self.handle, self.api_key = handle, api_key
        self.inbox: asyncio.Queue[Event | Revoked] = asyncio.Queue()
        self.ended = False  # the request's terminal event has arrived
        self.closed = False
        self._pump = _spawn(self._forward_events())
        self._listener = _spawn(self._listen_for_revoke())
        self._watched = watch.Watched(
            user_id=api_key.user_id, session_key=None, revoke=self._watch_revoked, api_key_id=api_key.pk
        )
        watch.register(self._watched)

    async def next(self, timeout: float | None) -> Event | Revoked | None:
        """The next event, REVOKED, or None when nothing came within
        `timeout` seconds (None: wait as long as it takes)."""
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns an
        # item that arrives together with a cancel and drops the cancel, so a
        # client that hung up mid-reply kept its slot until daphne killed
        # the view (10 s later).
        try:
            async with asyncio.timeout(timeout):
                item = await self.inbox.get()
        except TimeoutError:
            return None
        if isinstance(item, Revoked):
            self.close()  # the request stops now, whatever the reader does next
        return item

    def close(self) -> None:
        """Cancel the request unless it ended, and stop watching it."""
        if self.closed:
            return
        self.closed = True
        if not self.ended:
            self.handle.cancel()
        watch.unregister(self._watched)
        self._listener.cancel()

    async def _forward_events(self) -> None:
        async for event in self.handle:
            self.ended = self.ended or event.terminal
            self.inbox.put_nowait(event)

    async def _watch_revoked(self, code: int) -> None:
        """The watch found the key revoked or its owner inactive."""
        self.inbox.put_nowait(REVOKED)

    async def _listen_for_revoke(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        group = self.api_key.group_name
        channel = None
        try:
            channel = await layer.new_channel()
            await layer.group_add(group, channel)
            while True:
                message = await layer.receive(channel)
                if message.get("type") == ApiKey.REVOKED_EVENT:
                    self.inbox.put_nowait(REVOKED)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            # The watch still notices a revoke, within half a second.
            logger.warning("Cannot listen for the revoke of API key %s", self.api_key.pk, exc_info=True)
        finally:
            if channel is not None:
                _spawn(_leave(layer, group, channel))


async def _leave(layer, group: str, channel: str) -> None:
    with contextlib.suppress(Exception):
        await layer.group_discard(group, channel)
