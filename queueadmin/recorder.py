"""Batched writing of one process's statistics.

Records and snapshots are buffered in memory on the event loop and written
together in one transaction: by the control's write task every second
(through database_sync_to_async, so the loop never waits on the database),
and once more from a thread when the service stops.
"""

import logging
import threading

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError, connections

from generation.runtime.types import Outcome, RequestRecord
from queueadmin import services

logger = logging.getLogger(__name__)

MAX_BUFFERED = 10_000  # if the database is down, drop statistics rather than memory
FINAL_FLUSH_TIMEOUT_S = 5.0


class StatsRecorder:
    """Buffers of GenerationRecord and QueueSnapshot rows waiting to be written.

    Touch it from the event loop only, apart from `flush_in_thread`, which
    takes the buffers before it leaves the loop.
    """

    def __init__(self):
        self.records: list[RequestRecord] = []
        self.snapshots: list[dict] = []

    def add_record(self, record: RequestRecord) -> None:
        """Queue a service record (see GenerationService) for writing."""
        self._append(self.records, record)

    def add_snapshot(self, snapshot: dict) -> None:
        """Queue a snapshot (see services.queue_snapshots_create) for writing."""
        self._append(self.snapshots, snapshot)

    def _append(self, buffer: list, item) -> None:
        if len(buffer) >= MAX_BUFFERED:
            del buffer[: len(buffer) // 2]
            logger.warning("Statistics are not being written; dropped the oldest half")
        buffer.append(item)

    def _take(self) -> tuple[list[RequestRecord], list[dict]]:
        records, snapshots = self.records, self.snapshots
        self.records, self.snapshots = [], []
        return records, snapshots

    async def flush(self) -> None:
        """Write what is buffered in one transaction.

        When the database cannot be reached (OperationalError, InterfaceError:
        a restart, a lost connection, a locked SQLite file) the batch goes
        back to the front of the buffers for the next flush, within
        MAX_BUFFERED; any other database error means a row the database
        refuses, which no retry would mend, so the batch is dropped with a
        warning naming the error (as is any other failure, so that the
        write task goes on).
        """
        records, snapshots = self._take()
        if records or snapshots:
            try:
                await database_sync_to_async(services.stats_batch_create)(
                    records=records, snapshots=snapshots
                )
            except (OperationalError, InterfaceError) as error:
                logger.warning(
                    "Could not write %d records and %d snapshots, kept for the next try: %s",
                    len(records),
                    len(snapshots),
                    error,
                )
                self._put_back(records, snapshots)
            except Exception as error:
                logger.warning("Dropped %d records and %d snapshots: %s", len(records), len(snapshots), error)

    def _put_back(self, records: list[RequestRecord], snapshots: list[dict]) -> None:
        # What arrived meanwhile goes after the older batch; the oldest are
        # dropped first if the total would pass MAX_BUFFERED.
        self.records = (records + self.records)[-MAX_BUFFERED:]
        self.snapshots = (snapshots + self.snapshots)[-MAX_BUFFERED:]

    def flush_in_thread(self) -> None:
        """Write what is buffered from a thread, waiting for it a few seconds.

        For shutdown, called on the loop: a task might never run because the
        loop may be about to close, and Django forbids the database on it.
        """
        records, snapshots = self._take()
        if records or snapshots:
            writer = threading.Thread(target=_write_now, args=(records, snapshots), name="queueadmin-flush")
            writer.start()
            writer.join(FINAL_FLUSH_TIMEOUT_S)


def interrupted_record(worker: str, request, finished_at: float) -> RequestRecord:
    """A record for a request still queued or running when its service stopped."""
    return RequestRecord.of(request, worker=worker, finished_at=finished_at, outcome=Outcome.INTERRUPTED)


def _write_now(records: list[RequestRecord], snapshots: list[dict]) -> None:
    try:
        services.stats_batch_create(records=records, snapshots=snapshots)
    except Exception as error:
        logger.warning("Dropped %d records at shutdown: %s", len(records), error)
    finally:
        connections.close_all()  # this thread's connections would otherwise stay open
