"""Each generation service's link to the settings, the console and the statistics.

`attach(service)` is called once by generation.runtime.registry when it
starts a service, inside the running loop (a start hook that
QueueAdminConfig.ready registers). It starts six tasks on that
loop:

- follow: applies the saved settings row at once, whatever Redis does, and
  again whenever it may have moved (queueadmin.following);
- listen: joins the control and status groups (again after any error),
  applies broadcast settings changes and console cancels, and remembers the
  statuses the other processes publish;
- publish: about twice a second, publishes this process's status, sets the
  Prometheus gauges, and every SNAPSHOT_INTERVAL_S queues a snapshot while
  the process is busy;
- write: every FLUSH_INTERVAL_S, writes the queued records and snapshots in
  one batch (queueadmin.recorder), so the loop never waits on the database
  and no write happens per token;
- seed: once, gives the service's start estimates (generation.runtime.eta)
  the run times of the site's last completed replies from before it started;
- purge: every PURGE_INTERVAL_S, removes for good the conversations deleted
  longer ago than the undo window (generation.services.conversations_purge),
  so that a busy site keeps its promise without the timer of
  `manage.py purge_deleted`, which remains the guarantee on a site no
  service has started on yet.

All state is touched on the loop only. The tasks end when the service is
stopped (a stop listener of the service).
"""

import asyncio
import contextlib
import logging
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from generation import services as generation_services
from generation.runtime.types import RequestRecord
from queueadmin import events, metrics, selectors
from queueadmin.following import SettingsFollower
from queueadmin.recorder import StatsRecorder, interrupted_record
from queueadmin.stats import ServiceStats

logger = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 0.5
FLUSH_INTERVAL_S = 1.0
SNAPSHOT_INTERVAL_S = 5.0
STALE_AFTER_S = 3.0  # a process not heard from for this long is left out of the console
PURGE_INTERVAL_S = 30.0  # half the undo window: gone within 1.5 minutes of the delete
REJOIN_INTERVAL_S = 60.0  # groups expire after a day, and a restarted Redis forgets them

_current = None


def attach(service) -> "Control":
    """Start the control of a freshly started `service` (call inside its loop)."""
    global _current
    control = Control(service)
    control.start()
    _current = control
    return control


def current() -> "Control | None":
    """The control of this process's current service, if one has started."""
    return _current


class CancelNotSent(Exception):
    """The cancel could not be broadcast (Redis is unreachable); it was applied
    on this process only."""


async def acancel(*, request_id: str, by: str) -> None:
    """Cancel `request_id` on whichever process runs or queues it.

    Applied on this process at once, then broadcast to the others (the
    service ignores ids it does not hold, so hearing it twice is harmless).
    Raises CancelNotSent when the broadcast fails, so the console can say so
    instead of claiming a cancel that reached only this process.
    """
    logger.info("%s cancels request %s from the console", by, request_id)
    layer = get_channel_layer()
    message = events.request_cancel(request_id=request_id, by=by)
    if _current is not None:
        _current.handle(message)
    if layer is None:
        return
    try:
        await layer.group_send(events.group_name(events.CONTROL), message)
    except Exception as error:
        logger.warning("Could not broadcast the cancel of %s: %s", request_id, error)
        raise CancelNotSent(str(error)) from error


class Control:
    """The background tasks of one GenerationService; see the module docstring."""

    def __init__(self, service):
        self.service = service
        self.layer = get_channel_layer()
        self.stats = ServiceStats()
        self.channel: str | None = None
        self.settings = SettingsFollower(service)
        self.peers: dict[str, tuple[float, dict]] = {}  # worker → (monotonic, status)
        self.recorder = StatsRecorder()
        self.tasks: list[asyncio.Task] = []
        self.closed = False
        # Set once the groups are joined and the saved row has been read once.
        self.ready = asyncio.Event()
        self._joined = False
        self._tokens_seen = 0  # tokens_total at the last publish, for the counter
        self._snapshot_tokens = 0
        self._snapshot_at = time.monotonic()
        self._was_busy = False

    def start(self) -> None:
        """Listen for records, start the tasks, and stop them with the service."""
        self.service.record_listeners.append(self._on_record)
        loop = self.service.loop
        for run in (self._seed, self._follow, self._listen, self._publish, self._write, self._purge):
            task = loop.create_task(run(), name=f"queueadmin-{run.__name__.strip('_')}")
            task.add_done_callback(_log_failure)
            self.tasks.append(task)
        self.service.stop_listeners.append(self.close)

    async def _seed(self) -> None:
        """Once: start the service's run-time window (its start estimates)
        with the site's completed replies from before it started."""
        before = time.time()
        older = await database_sync_to_async(selectors.run_times_recent)(before=before)
        self.service.run_times.seed(older)

    # Channel-layer messages -------------------------------------------

    def handle(self, message: dict) -> None:
        """Apply one message from the control or status group."""
        kind = message.get("type")
        if kind == events.SETTINGS_CHANGED:
            limits = events.settings_changed_limits(message, base=self.service.limits)
            self.settings.apply(limits, message["version"], events.settings_changed_policy(message))
        elif kind == events.REQUEST_CANCEL:
            self.service.cancel(str(message["request"]), by_staff=True)
        elif kind == events.WORKER_STATUS:
            status = message["status"]
            if status["worker"] != self.service.worker_name:
                self.peers[status["worker"]] = (time.monotonic(), status)
                self.settings.heard_of(status.get("settings_version"))

    async def _listen(self) -> None:
        if self.layer is not None:
            # The default prefix: channels-redis has one receive loop per
            # process, and whichever receive() holds its lock reads only the
            # Redis list of its own prefix. A channel with a prefix of its own
            # is starved while any other process-local channel is receiving.
            self.channel = await self.layer.new_channel()
        while self.layer is not None:
            try:
                if not self._joined:
                    await self._join(self.channel)
                    self._joined = True
                    self._mark_ready()
                    # A change may have been broadcast while we were not in the group.
                    self.settings.gap()
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # e.g. Redis is down; a restarted Redis has forgotten the groups.
                logger.warning("Control channel failed (%s); joining again", error)
                self._joined = False
                await asyncio.sleep(1)  # do not spin
                continue
            try:
                self.handle(message)
            except Exception:
                logger.exception("Control message %r failed", message.get("type"))
        self._joined = True
        self._mark_ready()

    async def _follow(self) -> None:
        await self.settings.run(on_read=self._mark_ready)

    def _mark_ready(self) -> None:
        if self._joined and self.settings.loaded:
            self.ready.set()

    async def _join(self, channel: str) -> None:
        for kind in (events.CONTROL, events.STATUS):
            await self.layer.group_add(events.group_name(kind), channel)

    # Status, metrics and snapshots ------------------------------------

    def status(self) -> dict:
        """This process's status: the service's, plus latencies and their samples."""
        status = self.service.status()
        status["latency"], status["samples"] = self.stats.latency()
        status["settings_version"] = self.settings.version
        status["published"] = time.time()
        return status

    def cluster(self) -> list[dict]:
        """Fresh statuses of every process that this one hears from, itself first."""
        horizon = time.monotonic() - STALE_AFTER_S
        self.peers = {name: peer for name, peer in self.peers.items() if peer[0] >= horizon}
        return [self.status()] + [status for _, status in sorted(self.peers.values(), key=_by_worker)]

    def console_payload(self) -> dict:
        """What the console shows: see selectors.console_payload."""
        return selectors.console_payload(
            self.cluster(), local_worker=self.service.worker_name, saved_version=self.settings.saved_version
        )

    async def _publish(self) -> None:
        joined_at = time.monotonic()
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            self._account()
            if self.layer is None or self.channel is None:
                continue
            try:
                if time.monotonic() - joined_at > REJOIN_INTERVAL_S:
                    await self._join(self.channel)
                    joined_at = time.monotonic()
                await self.layer.group_send(
                    events.group_name(events.STATUS), events.worker_status(self.status())
                )
            except Exception as error:
                logger.warning("Could not publish the queue status: %s", error)

    def _account(self) -> None:
        """Update the metrics, and queue a snapshot when one is due."""
        service = self.service
        tokens = self.stats.tokens_total(service)
        running, waiting = len(service.running), len(service.queue)
        cap = service.limits.max_concurrency
        metrics.observe_queue(
            running=running,
            waiting=waiting,
            cap=cap,
            new_tokens=tokens - self._tokens_seen,
            process_max_concurrency=service.process_max_concurrency,
        )
        metrics.observe_backend(service.backend_info, service.model_state)
        metrics.observe_admission(service.admission_status())
        self._tokens_seen = tokens
        now = time.monotonic()
        if now - self._snapshot_at < SNAPSHOT_INTERVAL_S:
            return
        new_tokens = tokens - self._snapshot_tokens
        busy = bool(running or waiting or new_tokens)
        # One idle snapshot after a busy spell, so the chart falls back to zero.
        if busy or self._was_busy:
            self.recorder.add_snapshot(
                {
                    "worker": service.worker_name,
                    "taken": time.time(),
                    "running": running,
                    "waiting": waiting,
                    "cap": cap,
                    "tokens": new_tokens,
                    "interval_s": round(now - self._snapshot_at, 3),
                },
            )
        self._was_busy = busy
        self._snapshot_at, self._snapshot_tokens = now, tokens

    # Records -----------------------------------------------------------

    def _on_record(self, record: RequestRecord) -> None:
        self.stats.observe(record)
        metrics.observe_record(record)
        self.recorder.add_record(record)

    async def _write(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.recorder.flush()

    async def _purge(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(PURGE_INTERVAL_S)
            before = timezone.now() - generation_services.DELETE_UNDO_WINDOW
            try:
                await database_sync_to_async(generation_services.conversations_purge)(before=before)
            except Exception as error:
                # The database is down; chat is too. Say so once, not every interval.
                if not failing:
                    logger.warning("Could not purge deleted conversations: %s", error)
                failing = True
            else:
                failing = False

    # Shutdown ----------------------------------------------------------

    def close(self) -> None:
        """Stop the tasks, leave the groups, and write what is left.

        Called on the loop by the service's stop(). Requests still queued or
        running are recorded as interrupted. The last batch is written in a
        thread that this call waits for (briefly): the loop may be about to
        close, so a task would not be sure to run.
        """
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError):
            self.service.record_listeners.remove(self._on_record)
        for task in self.tasks:
            task.cancel()
        if self.layer is not None and self.channel is not None and self.service.loop.is_running():
            self.service.loop.create_task(self._leave(self.channel))
        for request in [*self.service.running.values(), *self.service.queue]:
            self.recorder.add_record(interrupted_record(self.service.worker_name, request, time.time()))
        self.recorder.flush_in_thread()

    async def _leave(self, channel: str) -> None:
        with contextlib.suppress(Exception):
            for kind in (events.CONTROL, events.STATUS):
                await self.layer.group_discard(events.group_name(kind), channel)


def _by_worker(peer: tuple[float, dict]) -> str:
    return peer[1]["worker"]


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Queue control task %s failed", task.get_name(), exc_info=task.exception())
