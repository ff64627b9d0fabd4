"""After a crash: replies the dead process left `generating` become interrupted.

A process that dies mid-reply (kill -9, out of memory) cannot write the
reply's end. Its successor does, once, on the first request it serves:
daphne has no lifespan hook, and AppConfig.ready() must not touch the
database. A reply belongs to a dead process when its worker is this
process's own name (a restarted slot keeps its name: make stack, the
systemd unit) or a default `host:pid` name of this host whose pid is gone.
Replies of other live processes are never touched.
"""

import logging
import os
import socket

from channels.db import database_sync_to_async
from django.utils import timezone

from generation import services
from generation.runtime.service import default_worker_name

logger = logging.getLogger(__name__)


def is_dead_worker(worker: str, own_name: str | None = None) -> bool:
    """Whether the process that generated as `worker` is gone."""
    own_name = own_name or default_worker_name()
    if worker == own_name:
        return True  # our predecessor in this slot; we have not generated yet
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host, or a stable name we cannot judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


async def asweep_interrupted() -> int:
    """Mark this host's dead processes' replies interrupted; return how many."""
    before = timezone.now()
    count = await database_sync_to_async(services.messages_mark_interrupted)(
        before=before, is_dead=is_dead_worker
    )
    if count:
        logger.info("Marked %d replies left generating by a dead process as interrupted", count)
    return count


class SweepOnFirstRequest:
    """ASGI wrapper that runs the sweep before the first request it passes on.

    Later requests pass straight through. A failed sweep is logged and tried
    again on the next request, so a database hiccup at start-up is not fatal.
    """

    def __init__(self, application):
        self.application = application
        self.swept = False

    async def __call__(self, scope, receive, send):
        if not self.swept and scope["type"] in ("http", "websocket"):
            self.swept = True
            try:
                await asweep_interrupted()
            except Exception:
                self.swept = False
                logger.exception("Could not mark interrupted replies")
        return await self.application(scope, receive, send)
