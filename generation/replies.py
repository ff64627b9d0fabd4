"""This process's live chat replies, which outlive the socket that asked for them.

A `LiveReply` is made by the chat consumer (generation.consumers) when a
socket asks for a reply (send, regenerate, edit). From then on the reply
belongs here, not to the socket: its task forwards the generation service's
events as frames to every socket attached to it, and saves it: its row when
it starts, its text so far at most every PARTIAL_SAVE_INTERVAL_S while it
streams (never per token), and its end.

Sockets attach and detach. The asking socket is attached from the start; a
socket of the same person that opens the conversation attaches and first
gets an `attached` frame with the state so far. When the last socket leaves
(the page reloads, Wi-Fi drops), the reply keeps its place in the queue or
its slot for settings.GENERATION_REATTACH_GRACE_S seconds; if nobody
attaches by then it is cancelled, saved as `cancelled`, and its slot freed.
Stop, the login ending, deleting the conversation, and a new message of the
same person while nobody is attached (`acancel_orphans`) cancel at once.

The registry is this process's only: a page whose socket reaches another
server process cannot attach (docs/protocol.md says what it sees then).
Everything here runs on the process's event loop.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from django.conf import settings

from generation import events, services, watch
from generation.models import Conversation, Message
from generation.runtime.registry import get_service
from generation.runtime.types import Done, Error, ErrorCode, FinishReason, Queued, Started, Token

logger = logging.getLogger(__name__)

# How often, at most, the text so far of a streaming reply is written to its
# row: a crash or restart loses at most this much of it.
PARTIAL_SAVE_INTERVAL_S = 3.0
# How long a new message waits for the same person's orphaned reply to end
# (it stops before the model's next step, so this is ample).
ORPHAN_END_WAIT_S = 5.0
DELETED_TEXT = "This conversation was deleted, so its reply was stopped."

_start_reply = database_sync_to_async(services.assistant_message_start)
_save_partial = database_sync_to_async(services.assistant_message_save_partial)
_finish_reply = database_sync_to_async(services.assistant_message_finish)
_fail_question = database_sync_to_async(services.user_message_fail)
_cancel_question = database_sync_to_async(services.user_message_cancel)

# request id -> reply, from its submit until its last frame is sent.
_live: dict[str, "LiveReply"] = {}


def find(*, user_id, conversation_id: int) -> "LiveReply | None":
    """`user_id`'s live reply of `conversation_id` in this process, if any."""
    for reply in _live.values():
        if reply.user_id == user_id and reply.conversation_id == conversation_id:
            return reply
    return None


async def acancel_orphans(*, user_id) -> None:
    """Cancel `user_id`'s replies that nobody is attached to (their pages
    closed within the grace period) and wait, at most ORPHAN_END_WAIT_S, until
    they have ended and are saved, so that they do not make the person's new
    message `busy`."""
    orphans = [r for r in _live.values() if r.user_id == user_id and not r.sockets]
    for orphan in orphans:
        orphan.cancel()
    tasks = [orphan.task for orphan in orphans if orphan.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=ORPHAN_END_WAIT_S)


class LiveReply:
    """One chat request of this process, from submit to its saved end, and
    the sockets showing it. Sockets are consumers with `async emit(frame)`
    (which never raises) and an `asend_lock` held while they attach."""

    def __init__(self, *, handle, user_id, session_key, conversation_id: int, question_id: int):
        self.handle = handle
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.question_id = question_id
        self.reply_id: int | None = None  # its row, until its end is saved
        self.message_id: int | None = None  # its row, for good
        self.parts: list[str] = []
        self.position: tuple[int, int] | None = None
        # The last `queued` frame's model state and estimate, for `attached`.
        self.wait_state: tuple[str, int | None] | None = None
        self.ended = False  # the terminal event arrived
        self.deleted = False  # the conversation was deleted
        self.sockets: set = set()
        self.task: asyncio.Task | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._saved_at = 0.0
        # Its own watch entry, so that a logout or a delete stops it even
        # while no socket is attached.
        self.watched = watch.Watched(
            user_id=user_id,
            session_key=session_key,
            revoke=self._revoked,
            conversation_id=conversation_id,
            conversation_gone=self._conversation_gone,
        )

    @classmethod
    def start(cls, *, socket, **fields) -> "LiveReply":
        """Register a reply for the just-submitted `handle`, attached to
        `socket`, and start forwarding its events; on the running loop."""
        reply = cls(**fields)
        reply.sockets.add(socket)
        _live[reply.handle.id] = reply
        watch.register(reply.watched)
        reply.task = asyncio.create_task(reply._run(), name=f"chat-reply-{reply.handle.id}")
        reply.task.add_done_callback(_log_failure)
        return reply

    # What sockets call -------------------------------------------------

    def attach(self, socket) -> dict:
        """Attach `socket` (it gets every frame from now on) and return the
        `attached` frame describing the reply so far, for it to send first;
        the caller holds the socket's send lock so no frame overtakes it."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.sockets.add(socket)
        waiting = self.message_id is None
        model_state, eta_s = self.wait_state if waiting and self.wait_state else (None, None)
        return events.attached(
            self.handle.id,
            conversation=self.conversation_id,
            user_message=self.question_id,
            message=self.message_id,
            text="".join(self.parts),
            position=self.position if waiting else None,
            model_state=model_state,
            eta_s=eta_s,
        )

    def detach(self, socket) -> None:
        """`socket` is gone. If it was the last, the reply keeps its place
        for GENERATION_REATTACH_GRACE_S (0: cancelled at once)."""
        self.sockets.discard(socket)
        if self.sockets or self.ended or self._grace is not None:
            return
        grace = settings.GENERATION_REATTACH_GRACE_S
        if grace <= 0:
            self.cancel()
        else:
            self._grace = asyncio.get_running_loop().call_later(grace, self._abandon)

    def cancel(self) -> None:
        """Stop it now (a queued one leaves the queue, a running one frees its
        slot before the model's next step); its task saves what it got."""
        if not self.ended:
            self.handle.cancel()

    # Callbacks ---------------------------------------------------------

    def _abandon(self) -> None:
        self._grace = None
        if not self.sockets:
            logger.info("Nobody came back for request %s: cancelled", self.handle.id)
            self.cancel()

    async def _revoked(self, code: int) -> None:
        self.cancel()  # the login that asked for it ended

    def _conversation_gone(self, conversation_id: int) -> None:
        self.deleted = True
        self.cancel()

    # The forwarding task -----------------------------------------------

    async def _send(self, frame: dict) -> None:
        for socket in list(self.sockets):
            await socket.emit(frame)

    async def _run(self) -> None:
        """Forward the events, save the reply, end with its last frame.
        A deleted conversation: nothing more is forwarded and the reply ends
        with `not_found` (its rows are gone, so the saves write nothing)."""
        handle = self.handle
        try:
            await self._send(events.accepted(handle.id, self.conversation_id, self.question_id))
            async for event in handle:
                if self.deleted and not event.terminal:
                    continue
                if isinstance(event, Queued):
                    self.position = (event.position, event.waiting)
                    self.wait_state = (str(event.model_state), event.eta_s)
                    await self._send(
                        events.queued(
                            handle.id,
                            event.position,
                            event.waiting,
                            model_state=event.model_state,
                            eta_s=event.eta_s,
                            moved_back=event.moved_back,
                        )
                    )
                elif isinstance(event, Started):
                    await self._started()
                elif isinstance(event, Token):
                    self.parts.append(event.text)
                    await self._send(events.token(handle.id, event.text))
                    await self._save_if_due()
                else:
                    self.ended = True
                    frame = await self._save_end(event)
                    await self._last(frame)
        except asyncio.CancelledError:
            if self.reply_id is not None:  # the process is stopping
                await _finish_reply(
                    message_id=self.reply_id, content="".join(self.parts), status=Message.Status.INTERRUPTED
                )
            raise
        except Exception:
            handle.cancel()  # the model must not go on for nobody
            if self.reply_id is not None:
                await _finish_reply(
                    message_id=self.reply_id,
                    content="".join(self.parts),
                    status=Message.Status.ERROR,
                    error_code=ErrorCode.INTERNAL,
                )
            await self._last(events.error(handle.id, ErrorCode.INTERNAL))
            raise
        finally:
            self.ended = True
            _live.pop(handle.id, None)
            watch.unregister(self.watched)
            if self._grace is not None:
                self._grace.cancel()

    async def _started(self) -> None:
        try:
            reply = await _start_reply(
                conversation_id=self.conversation_id,
                request_id=self.handle.id,
                worker=get_service().worker_name,
            )
        except Conversation.DoesNotExist:  # deleted while it waited
            self._conversation_gone(self.conversation_id)
            return
        self.reply_id = self.message_id = reply.pk
        self.position = None
        self._saved_at = time.monotonic()
        await self._send(events.started(self.handle.id, reply.pk))

    async def _save_if_due(self) -> None:
        if self.reply_id is not None and time.monotonic() - self._saved_at >= PARTIAL_SAVE_INTERVAL_S:
            self._saved_at = time.monotonic()
            await _save_partial(message_id=self.reply_id, content="".join(self.parts))

    async def _last(self, frame: dict) -> None:
        """Send the reply's last frame; it leaves the registry first (no await
        in between), so a socket that opens the conversation later finds it
        ended and saved rather than attaching to a reply that sends nothing."""
        sockets = list(self.sockets)
        _live.pop(self.handle.id, None)
        for socket in sockets:
            await socket.emit(frame)

    async def _save_end(self, event: Done | Error) -> dict:
        """Write the reply (or its question, when it never started) once, with
        its final status; return the last frame to send."""
        reply_id, self.reply_id = self.reply_id, None  # once saved, nothing may overwrite it
        request_id = self.handle.id
        if isinstance(event, Error):
            if reply_id is None:
                await _fail_question(message_id=self.question_id, error_code=event.code)
            else:
                await _finish_reply(
                    message_id=reply_id,
                    content="".join(self.parts),
                    status=Message.Status.ERROR,
                    error_code=event.code,
                )
            frame = events.service_error(request_id, event)
        else:
            cancelled = event.finish_reason is FinishReason.CANCELLED
            code = (
                ErrorCode.CANCELLED_BY_STAFF if cancelled and self.handle.request.cancelled_by_staff else ""
            )
            if reply_id is None:
                await _cancel_question(message_id=self.question_id, error_code=code)
            else:
                await _finish_reply(
                    message_id=reply_id,
                    content=event.text,
                    status=Message.Status.CANCELLED if cancelled else Message.Status.COMPLETE,
                    finish_reason=event.finish_reason,
                    error_code=code,
                    usage=event.usage,
                    timings=event.timings,
                )
            frame = events.done(request_id, reply_id, event, code=code or None)
        if self.deleted:
            return events.error(request_id, ErrorCode.NOT_FOUND, DELETED_TEXT)
        return frame


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Chat reply task failed", exc_info=task.exception())
