"""How a process keeps its generation limits at the saved settings row.

The saved row (queueadmin.GenerationSettings) is the truth; the broadcast
over the channel layer only makes a change fast. A `SettingsFollower`
belongs to one process's control (queueadmin.control) and lives on the
service's loop. Its `run` task reads the row when the service starts,
whatever Redis does, and again every QUEUEADMIN_SETTINGS_CHECK_S seconds,
after any gap in the broadcast (`gap`), and when a peer reports a newer
version (`heard_of`). So a process lags a save by at most that interval
plus one database read, even if it missed the broadcast.
"""

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async
from django.conf import settings

from generation.runtime.types import Limits
from queueadmin import selectors

logger = logging.getLogger(__name__)


class SettingsFollower:
    """The settings version one service runs, and the task that keeps it current.

    Versions start at 1 with the first save; 0 is the environment's defaults.
    Touch it on the service's loop only.
    """

    def __init__(self, service):
        self.service = service
        self.version = 0  # the version this process runs
        self.saved_version = 0  # the newest version known to be saved (row, broadcast, peers)
        self.loaded = False  # the row has been read (or tried) once
        self._reload = asyncio.Event()  # wakes `run` to read the row now

    def apply(self, limits: Limits, version: int, policy=None) -> None:
        """Apply saved limits unless a newer version is already in force.

        Called with a broadcast `settings.changed` and with each read of the row;
        the version stops a late read from undoing a newer broadcast.
        `policy` (a PriorityPolicy, or None: unchanged) is applied also at
        the version in force, so that each read of the row brings group
        membership changes in.
        """
        self.saved_version = max(self.saved_version, version)
        if policy is not None and version >= self.version:
            self.service.update_priority(policy)
        if version <= self.version:
            return
        self.version = version
        self.service.update_limits(limits)
        logger.info("%s applies settings version %d: %s", self.service.worker_name, version, limits)

    def gap(self) -> None:
        """The broadcast may have been missed (the groups were just joined): read the row now."""
        self._reload.set()

    def heard_of(self, version) -> None:
        """A peer runs `version` (from its status): read the row now if that is newer.

        Asks once per new version, so a peer ahead of the database this process
        reads (a lagging replica) does not cost a query per status.
        """
        if isinstance(version, int) and version > max(self.saved_version, self.version):
            self.saved_version = version
            self._reload.set()

    async def run(self, *, on_read=None) -> None:
        """Read and apply the row now, then whenever it may have moved (a task).

        `on_read()` is called after each read, successful or not.
        """
        while True:
            self._reload.clear()
            await self._read()
            self.loaded = True
            if on_read is not None:
                on_read()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.QUEUEADMIN_SETTINGS_CHECK_S):
                    await self._reload.wait()

    async def _read(self) -> None:
        try:
            saved = await database_sync_to_async(_saved_with_policy)()
        except Exception as error:
            logger.warning(
                "Could not read the generation settings; keeping version %d: %s", self.version, error
            )
            return
        if saved[0] is not None:
            self.apply(*saved[0], saved[1])
        elif saved[1]:
            self.service.update_priority(saved[1])
        elif not self.loaded:
            # Never saved: the environment's limits rule. Applying them once
            # also makes them the site queue's, replacing whatever an
            # earlier deployment left in Redis.
            self.service.update_limits(self.service.limits)


def _saved_with_policy():
    """(the saved (limits, version) or None, the priority policy), in one
    thread hop."""
    return selectors.generation_settings_saved(), selectors.priority_policy_get()
