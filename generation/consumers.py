"""The chat's WebSocket consumer: /ws/chat/.

A transport adapter: it parses frames (generation.events), stores messages
through generation.services, hands the request to the generation service
and attaches to the resulting live reply (generation.replies), whose task
forwards the events and saves the reply. Channels runs one handler at a time
per socket; the reply's task is not the socket's, so the socket stays free
to receive `cancel`, and the reply outlives the socket by a grace period.
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser
from django.utils import translation

from generation import events, replies, selectors, services, text, watch
from generation.language import language_of
from generation.models import Conversation
from generation.runtime.registry import get_service
from generation.runtime.types import ErrorCode
from generation.throttle import FRAME_BURST, FRAME_RATE_PER_S, SLOW_DOWN, Notices, limit_frames

logger = logging.getLogger(__name__)

UNAUTHENTICATED = watch.UNAUTHENTICATED
# Over the limit, frames this short are still read, so that a cancel is
# always honoured; longer ones are dropped unread, which keeps a drop cheap.
CANCEL_FRAME_MAX_CHARS = 256

# Database helpers, wrapped once ------------------------------------------


@database_sync_to_async
def _store_question(user, command) -> tuple[int, int, list[dict], float | None]:
    """Store what a send, regenerate or edit asks; (conversation id, question
    id, history for the model, the conversation's temperature). Refusals
    become the person's error codes."""
    try:
        if isinstance(command, events.Send):
            message, history = services.user_message_create(
                owner=user, conversation_id=command.conversation, content=command.content
            )
        elif isinstance(command, events.Regenerate):
            message, history = services.reply_regenerate(
                owner=user, conversation_id=command.conversation, message_id=command.message
            )
        else:
            message, history = services.user_message_edit(
                owner=user,
                conversation_id=command.conversation,
                message_id=command.message,
                content=command.content,
            )
    except Conversation.DoesNotExist:
        raise events.ClientError(ErrorCode.NOT_FOUND) from None
    except services.NotLastTurn:
        raise events.ClientError(ErrorCode.NOT_LAST) from None
    except services.ReplyInProgress:
        raise events.ClientError(ErrorCode.BUSY) from None
    except text.TextRefused as refused:
        raise events.ClientError(ErrorCode.INVALID, str(refused)) from None
    # The conversation's sampling choice (None: the site's default), as read with it.
    return message.conversation_id, message.pk, history, message.conversation.temperature


@database_sync_to_async
def _check_owner(user, conversation_id: int) -> None:
    try:
        selectors.conversation_get(owner=user, conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise events.ClientError(ErrorCode.NOT_FOUND) from None


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab's chat socket; it shows at most one live reply at a time."""

    # No channel layer: a reply streams inside one process, so a chat socket
    # never needs Redis and keeps working while Redis restarts.
    channel_layer_alias = None

    # Until connect runs (and for an app that ends before it does).
    closed = False
    live: replies.LiveReply | None = None
    watched = None

    async def __call__(self, scope, receive, send):
        """Run one socket. However it ends (a disconnect, a crash, or the server
        cancelling the app, as daphne does when a closed socket's app has not
        ended within application_close_timeout), it leaves its reply, which
        then waits GENERATION_REATTACH_GRACE_S for a page to come back."""
        self.asend_lock = asyncio.Lock()
        try:
            await super().__call__(scope, self.throttled(receive), send)
        finally:
            self.reader_gone()

    # WebSocket event handlers -----------------------------------------

    async def connect(self):
        self.user = self.scope.get("user") or AnonymousUser()
        # The reader's language, as the page's (cookie, else Accept-Language):
        # refusals of this socket's frames are worded in it.
        self.language = language_of(self.scope)
        self.closed = False
        self.live = None
        self.watched: watch.Watched | None = None
        # Accept first: a close before the handshake reaches browsers as 1006,
        # and the page needs 4401 to know it must log in again.
        await self.accept()
        if not self.user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        self.watched = watch.Watched(
            user_id=self.user.pk, session_key=watch.session_key_of(self.scope), revoke=self.revoke
        )
        watch.register(self.watched)
        # Opening the chat page starts the model load (a minute or two the
        # first time on a small machine), so the first message waits less.
        get_service()

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if not self.user.is_authenticated:
            return  # closing with 4401; frames racing the close are dropped
        try:
            with translation.override(self.language):
                command = events.parse_client_frame(text_data, bytes_data)
                if not await self.authorised():
                    return
                if isinstance(command, events.Cancel):
                    self.cancel_reply()
                elif isinstance(command, events.Open):
                    await self.open_conversation(command.conversation)
                else:
                    await self.start_reply(command)
        except events.ClientError as refused:
            await self.emit(events.refusal(refused))
        except Exception:
            logger.exception("Chat frame failed")
            await self.emit(events.error(None, ErrorCode.INTERNAL))

    async def disconnect(self, code):
        self.reader_gone()

    # Command helpers ---------------------------------------------------

    def busy(self) -> bool:
        """Whether this socket shows a reply that has not ended."""
        return self.live is not None and not self.live.ended

    async def start_reply(self, command: events.Send | events.Regenerate | events.Edit) -> None:
        """Store the question (new, the same again, or edited), then ask for a
        reply and attach to it."""
        if self.busy():
            raise events.ClientError(ErrorCode.BUSY)
        # The person's replies whose pages are gone must not make them busy.
        await replies.acancel_orphans(user_id=self.user.pk)
        conversation_id, question_id, history, temperature = await _store_question(self.user, command)
        if not self.user.is_authenticated:
            return  # revoked while storing: the message is kept, no reply is asked for
        handle = get_service().submit(
            user_id=self.user.pk,
            messages=history,
            temperature=temperature,
            meta={"conversation": conversation_id, "message": question_id, "user": self.user.get_username()},
        )
        # Attached before anything is sent: from here on, a reader that goes
        # away (a failed send included) leaves a reply behind, never loses it.
        self.live = replies.LiveReply.start(
            socket=self,
            handle=handle,
            user_id=self.user.pk,
            session_key=self.watched.session_key,
            conversation_id=conversation_id,
            question_id=question_id,
        )

    async def open_conversation(self, conversation_id: int) -> None:
        """The page shows `conversation_id`: attach to its live reply here, if
        any (`attached`, then its usual frames), else say `idle`."""
        await _check_owner(self.user, conversation_id)
        reply = replies.find(user_id=self.user.pk, conversation_id=conversation_id)
        if reply is None:  # (one that is ending still sends its last frame)
            await self.emit(events.idle(conversation_id))
            return
        if self.busy() and self.live is not reply:
            raise events.ClientError(ErrorCode.BUSY)
        async with self.asend_lock:  # no frame of the reply before `attached`
            frame = reply.attach(self)
            self.live = reply
            await self.send_unlocked(frame)

    def cancel_reply(self) -> None:
        """Cancel this socket's reply, if any; a finished one is left alone."""
        if self.live is not None:
            self.live.cancel()

    async def authorised(self) -> bool:
        """Whether this socket's login still stands; if not, revoke it (one
        check per frame, so an action sent before the watch's tick is refused)."""
        code = await watch.averify(self.watched)
        if code is not None:
            await self.revoke(code)
        return code is None

    async def revoke(self, code: int) -> None:
        """Called by the watch when this socket's login ended (logout,
        deactivation, password change): stop the reply at once, which is saved
        as cancelled, and close with `code` (4401), which sends the page to login."""
        watch.unregister(self.watched)
        self.user = AnonymousUser()  # frames racing the close are dropped
        self.cancel_reply()
        self.closed = True  # no frame after the close
        await self.close(code=code)

    def reader_gone(self) -> None:
        """Called as soon as the socket can no longer be written to (disconnect,
        a refused send, the app ending): nothing more is sent, the socket
        leaves the watch and its reply, which waits for a page to come back
        (replies.LiveReply.detach)."""
        self.closed = True
        watch.unregister(self.watched)
        if self.live is not None:
            self.live.detach(self)

    def throttled(self, receive):
        """The ASGI `receive`, with client frames over the rate limit dropped
        before Channels dispatches them (generation.throttle.limit_frames)."""
        self.notices = Notices()
        return limit_frames(receive, burst=FRAME_BURST, rate=FRAME_RATE_PER_S, on_drop=self.drop_frame)

    async def drop_frame(self, message: dict) -> None:
        """A frame over the rate limit: a short `cancel` is still honoured;
        anything else is dropped, with one `invalid` notice per interval."""
        text_data = message.get("text")
        if text_data is not None and len(text_data) <= CANCEL_FRAME_MAX_CHARS:
            try:
                command = events.parse_client_frame(text_data, None)
            except events.ClientError:
                command = None
            if isinstance(command, events.Cancel):
                self.cancel_reply()
                return
        if self.notices.due():
            await self.emit(events.error(None, ErrorCode.INVALID, SLOW_DOWN))

    # Sending -----------------------------------------------------------

    async def emit(self, frame: dict) -> None:
        """Send a frame unless the socket has closed; never raises. Frames go
        out in the order emitted (one lock), an `attached` frame before the
        reply's next ones."""
        async with self.asend_lock:
            await self.send_unlocked(frame)

    async def send_unlocked(self, frame: dict) -> None:
        """`emit` for a caller that holds `asend_lock`.

        The client can close before `disconnect` runs (which may be late, or
        never, if the server drops the app); the server then refuses the send,
        each ASGI server with its own exception. That refusal is news that the
        reader is gone: the frame is dropped and the socket leaves its reply.
        """
        if self.closed:
            return
        try:
            await self.send_json(frame)
        except Exception:
            logger.debug("Dropped a %s frame for a closed socket", frame["type"])
            self.reader_gone()
