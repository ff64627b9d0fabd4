"""The chat's WebSocket consumer: /ws/chat/.

A transport adapter: it parses frames (generation.events), stores messages
through generation.services, hands the reply to the generation service and
forwards the service's events. Channels runs one handler at a time per
socket, so a reply's events are forwarded by an asyncio task that the `send`
handler starts; the socket stays free to receive `cancel` meanwhile.
"""

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from generation import events, services, watch
from generation.models import Conversation, Message
from generation.runtime.registry import get_service
from generation.runtime.types import Done, Error, ErrorCode, FinishReason, Queued, Started, Token
from generation.throttle import FRAME_BURST, FRAME_RATE_PER_S, SLOW_DOWN, Notices, limit_frames

logger = logging.getLogger(__name__)

# How long a closing socket waits for its cancelled reply to end and be
# saved; a cancelled reply stops before the model's next step, so this is
# ample, and the reply is saved as interrupted if it is exceeded.
DISCONNECT_GRACE_S = 5.0
UNAUTHENTICATED = watch.UNAUTHENTICATED
DELETED_TEXT = "This conversation was deleted, so its reply was stopped."
# Over the limit, frames this short are still read, so that a cancel is
# always honoured; longer ones are dropped unread, which keeps a drop cheap.
CANCEL_FRAME_MAX_CHARS = 256
# Replies whose socket is gone run on until their cancel lands and they are
# saved; the loop holds tasks only weakly, so they are held here.
_orphaned_replies: set[asyncio.Task] = set()

# Database helpers, wrapped once ------------------------------------------


@database_sync_to_async
def _store_user_message(user, conversation_id, content):
    try:
        message, history = services.user_message_create(
            owner=user, conversation_id=conversation_id, content=content
        )
    except Conversation.DoesNotExist:
        raise events.ClientError(ErrorCode.NOT_FOUND) from None
    return message.conversation_id, message.pk, history


_start_reply = database_sync_to_async(services.assistant_message_start)
_finish_reply = database_sync_to_async(services.assistant_message_finish)
_fail_user_message = database_sync_to_async(services.user_message_fail)
_cancel_user_message = database_sync_to_async(services.user_message_cancel)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab's chat socket; at most one reply in flight at a time."""

    # No channel layer: a reply streams inside one process, so a chat socket
    # never needs Redis and keeps working while Redis restarts.
    channel_layer_alias = None

    # Until connect runs (and for an app that ends before it does).
    closed = False
    handle = None
    reply: asyncio.Task | None = None
    watched = None

    async def __call__(self, scope, receive, send):
        """Run one socket. However it ends (a disconnect, a crash, or the server
        cancelling the app, as daphne does when a closed socket's app has not
        ended within application_close_timeout), its reply is cancelled and
        still saved: a reply never outlives its reader."""
        try:
            await super().__call__(scope, self.throttled(receive), send)
        finally:
            if self.reply is not None and not self.reply.done():
                _orphaned_replies.add(self.reply)
                self.reply.add_done_callback(_orphaned_replies.discard)
            self.reader_gone()

    # WebSocket event handlers -----------------------------------------

    async def connect(self):
        self.user = self.scope.get("user") or AnonymousUser()
        self.closed = False
        self.handle = None
        self.reply: asyncio.Task | None = None
        self.watched: watch.Watched | None = None
        self.orphaned = False  # the live reply's conversation was deleted
        # Accept first: a close before the handshake reaches browsers as 1006,
        # and the page needs 4401 to know it must log in again.
        await self.accept()
        if not self.user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        self.watched = watch.Watched(
            user_id=self.user.pk,
            session_key=watch.session_key_of(self.scope),
            revoke=self.revoke,
            conversation_gone=self.conversation_gone,
        )
        watch.register(self.watched)
        # Opening the chat page starts the model load (a minute or two the
        # first time on a small machine), so the first message waits less.
        get_service()

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if not self.user.is_authenticated:
            return  # closing with 4401; frames racing the close are dropped
        try:
            command = events.parse_client_frame(text_data, bytes_data)
            if not await self.authorised():
                return
            if isinstance(command, events.Cancel):
                self.cancel_reply()
            else:
                await self.start_reply(command)
        except events.ClientError as error:
            await self.emit(events.error(None, error.code, error.message))
        except Exception:
            logger.exception("Chat frame failed")
            await self.emit(events.error(None, ErrorCode.INTERNAL))

    async def disconnect(self, code):
        # The reply is cancelled (a queued one leaves the queue, a running one
        # frees its slot) and its forwarding task saves what it got.
        self.reader_gone()
        if self.reply is None or self.reply.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.reply), DISCONNECT_GRACE_S)
        except TimeoutError:
            self.reply.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reply

    # Command helpers ---------------------------------------------------

    async def start_reply(self, command: events.Send) -> None:
        """Store the user's message, then ask for a reply and forward its events."""
        if self.reply is not None and not self.reply.done():
            raise events.ClientError(ErrorCode.BUSY)
        conversation_id, message_id, history = await _store_user_message(
            self.user, command.conversation, command.content
        )
        if not self.user.is_authenticated:
            return  # revoked while storing: the message is kept, no reply is asked for
        handle = get_service().submit(
            user_id=self.user.pk,
            messages=history,
            meta={"conversation": conversation_id, "message": message_id, "user": self.user.get_username()},
        )
        # The task is made before anything is sent: from here on, a reader
        # that goes away (a failed send included) finds a reply to cancel.
        self.handle = handle
        self.orphaned = False
        self.reply = asyncio.create_task(self.forward_reply(handle, conversation_id, message_id))
        self.reply.add_done_callback(_log_failure)
        self.watched.conversation_id = conversation_id  # the watch stops it if deleted

    def cancel_reply(self) -> None:
        """Cancel this socket's reply, if any; a finished one is left alone."""
        if self.reply is not None and not self.reply.done():
            self.handle.cancel()

    async def authorised(self) -> bool:
        """Whether this socket's login still stands; if not, revoke it (one
        check per frame, so an action sent before the watch's tick is refused)."""
        code = await watch.averify(self.watched)
        if code is not None:
            await self.revoke(code)
        return code is None

    async def revoke(self, code: int) -> None:
        """Called by the watch when this socket's login ended (logout,
        deactivation, password change): stop the reply, which is saved as
        cancelled, and close with `code` (4401), which sends the page to login."""
        watch.unregister(self.watched)
        self.user = AnonymousUser()  # frames racing the close are dropped
        self.cancel_reply()
        self.closed = True  # no frame after the close
        await self.close(code=code)

    def conversation_gone(self, conversation_id: int) -> None:
        """Called on the loop when the live reply's conversation was deleted:
        stop the reply; it ends with a `not_found` error instead of `done`."""
        if self.reply is None or self.reply.done() or self.watched.conversation_id != conversation_id:
            return
        self.orphaned = True
        self.handle.cancel()

    def reader_gone(self) -> None:
        """Called as soon as the socket can no longer be written to (disconnect,
        a refused send, the app ending): nothing more is sent, the socket
        leaves the watch, and the reply is cancelled; its forwarding task
        still saves it."""
        self.closed = True
        watch.unregister(self.watched)
        self.cancel_reply()

    def throttled(self, receive):
        """The ASGI `receive`, with client frames over the rate limit dropped
        before Channels dispatches them (generation.throttle.limit_frames)."""
        self.notices = Notices()
        return limit_frames(receive, burst=FRAME_BURST, rate=FRAME_RATE_PER_S, on_drop=self.drop_frame)

    async def drop_frame(self, message: dict) -> None:
        """A frame over the rate limit: a short `cancel` is still honoured;
        anything else is dropped, with one `invalid` notice per interval."""
        text = message.get("text")
        if text is not None and len(text) <= CANCEL_FRAME_MAX_CHARS:
            with contextlib.suppress(events.ClientError):
                if isinstance(events.parse_client_frame(text, None), events.Cancel):
                    self.cancel_reply()
                    return
        if self.notices.due():
            await self.emit(events.error(None, ErrorCode.INVALID, SLOW_DOWN))

    async def forward_reply(self, handle, conversation_id: int, user_message_id: int) -> None:
        """Forward one reply's events and save it when it ends (runs as a task).

        The conversation may be deleted at any moment; then the request is
        cancelled, nothing more is forwarded, and the reply ends with a
        `not_found` error (its rows are gone, so the saves write nothing).
        """
        reply_id = None
        parts: list[str] = []
        try:
            await self.emit(events.accepted(handle.id, conversation_id, user_message_id))
            async for event in handle:
                if self.orphaned and not event.terminal:
                    continue
                if isinstance(event, Queued):
                    await self.emit(
                        events.queued(
                            handle.id,
                            event.position,
                            event.waiting,
                            model_state=event.model_state,
                            eta_s=event.eta_s,
                        )
                    )
                elif isinstance(event, Started):
                    try:
                        reply = await _start_reply(
                            conversation_id=conversation_id,
                            request_id=handle.id,
                            worker=get_service().worker_name,
                        )
                    except Conversation.DoesNotExist:  # deleted while it waited
                        self.orphaned = True
                        handle.cancel()
                        continue
                    reply_id = reply.pk
                    await self.emit(events.started(handle.id, reply_id))
                elif isinstance(event, Token):
                    parts.append(event.text)
                    await self.emit(events.token(handle.id, event.text))
                elif isinstance(event, Done):
                    # Cleared before saving: once saved, nothing may overwrite it.
                    saved, reply_id = reply_id, None
                    await self.save_done(saved, user_message_id, event)
                    await self.emit(self.ending(handle.id, events.done(handle.id, saved, event)))
                elif isinstance(event, Error):
                    saved, reply_id = reply_id, None
                    await self.save_error(saved, user_message_id, parts, event)
                    await self.emit(self.ending(handle.id, events.service_error(handle.id, event)))
        except asyncio.CancelledError:
            if reply_id is not None:
                await _finish_reply(
                    message_id=reply_id, content="".join(parts), status=Message.Status.INTERRUPTED
                )
            raise
        except Exception:
            # The model must not go on generating for a reader that is gone.
            handle.cancel()
            if reply_id is not None:
                await _finish_reply(
                    message_id=reply_id,
                    content="".join(parts),
                    status=Message.Status.ERROR,
                    error_code=ErrorCode.INTERNAL,
                )
            await self.emit(events.error(handle.id, ErrorCode.INTERNAL))
            raise
        finally:
            if self.watched is not None:
                self.watched.conversation_id = None

    def ending(self, request_id: str, frame: dict) -> dict:
        """The reply's last frame: `frame`, or not_found if its conversation was deleted."""
        return events.error(request_id, ErrorCode.NOT_FOUND, DELETED_TEXT) if self.orphaned else frame

    async def save_done(self, reply_id: int | None, user_message_id: int, event: Done) -> None:
        """Write the reply once, with its final status, counts and timings; a
        request cancelled while queued has no reply, so its question is marked."""
        if reply_id is None:
            await _cancel_user_message(message_id=user_message_id)
            return
        cancelled = event.finish_reason is FinishReason.CANCELLED
        await _finish_reply(
            message_id=reply_id,
            content=event.text,
            status=Message.Status.CANCELLED if cancelled else Message.Status.COMPLETE,
            finish_reason=event.finish_reason,
            usage=event.usage,
            timings=event.timings,
        )

    async def save_error(self, reply_id, user_message_id: int, parts: list[str], event: Error) -> None:
        """Record a failed reply: on the reply if it started, else on the question."""
        if reply_id is None:
            await _fail_user_message(message_id=user_message_id, error_code=event.code)
        else:
            await _finish_reply(
                message_id=reply_id,
                content="".join(parts),
                status=Message.Status.ERROR,
                error_code=event.code,
            )

    async def emit(self, frame: dict) -> None:
        """Send a frame unless the socket has closed (the reply still gets saved).

        The client can close before `disconnect` runs (which may be late, or
        never, if the server drops the app); the server then refuses the send,
        each ASGI server with its own exception. That refusal is news that the
        reader is gone: the frame is dropped and the reply cancelled at once.
        """
        if self.closed:
            return
        try:
            await self.send_json(frame)
        except Exception:
            logger.debug("Dropped a %s frame for a closed socket", frame["type"])
            self.reader_gone()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Chat reply task failed", exc_info=task.exception())
