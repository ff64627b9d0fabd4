"""The admin console's WebSocket: /ws/queue/.

A transport adapter: it checks that the user is staff, pushes the console
payload (every process and the total, see selectors.console_payload) every
PUSH_INTERVAL_S, and turns a Cancel click into a broadcast to the process
that owns the request. Like /ws/chat/, it accepts and then closes an
unwelcome socket, because browsers only see a close code after the
handshake: 4401 without a login, 4403 for a user who is not staff. The
socket is watched (generation.watch) as staff-only: a logout, deactivation
or password change closes it with 4401 and lost staff status with 4403,
within a second, and each Cancel is checked again before it is sent.
"""

import asyncio
import json
import logging
import re

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from generation import watch
from generation.runtime.registry import get_service
from generation.runtime.types import ErrorCode
from generation.throttle import FRAME_BURST, FRAME_RATE_PER_S, SLOW_DOWN, Notices, limit_frames
from queueadmin import control

logger = logging.getLogger(__name__)

PUSH_INTERVAL_S = 0.5
UNAUTHENTICATED = watch.UNAUTHENTICATED
FORBIDDEN = watch.FORBIDDEN
REQUEST_ID = re.compile(r"[0-9a-f]{1,64}")  # fullmatch: "$" would let a trailing newline in
MAX_FRAME_CHARS = 1000
# More precise than the `unavailable` code's words (which speak of the model):
# here only the broadcast failed, and the cancel did reach this process.
CANCEL_NOT_SENT = (
    "Redis is unreachable, so the cancel reached this server process only. Try again when Redis is back."
)


class QueueConsumer(AsyncJsonWebsocketConsumer):
    """One staff member's live console."""

    # No channel layer: the console reads its process's memory and sends
    # cancels with group_send, so it never receives. A layer channel here would
    # take channels-redis's one receive loop per process and starve the
    # control channel (queueadmin.control) of cancels, settings and statuses.
    channel_layer_alias = None

    async def __call__(self, scope, receive, send):
        """Run one socket, its client frames rate-limited (generation.throttle)."""
        self.notices = Notices()
        limited = limit_frames(receive, burst=FRAME_BURST, rate=FRAME_RATE_PER_S, on_drop=self.drop_frame)
        await super().__call__(scope, limited, send)

    async def drop_frame(self, message: dict) -> None:
        """A frame over the rate limit: dropped, with one `invalid` notice per interval."""
        if self.notices.due():
            await self.send_error(ErrorCode.INVALID, SLOW_DOWN)

    # WebSocket event handlers -----------------------------------------

    async def connect(self):
        self.user = self.scope.get("user") or AnonymousUser()
        self.pusher: asyncio.Task | None = None
        self.watched: watch.Watched | None = None
        await self.accept()
        if not self.user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        if not (self.user.is_active and self.user.is_staff):
            await self.close(code=FORBIDDEN)
            return
        get_service()  # this process joins the cluster view if it had not yet
        self.pusher = asyncio.create_task(self.push_status())
        self.watched = watch.Watched(
            user_id=self.user.pk,
            session_key=watch.session_key_of(self.scope),
            revoke=self.revoke,
            staff_required=True,
        )
        watch.register(self.watched)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.pusher is None:
            return  # not staff: the socket is closing
        try:
            frame = json.loads(text_data or "") if len(text_data or "") <= MAX_FRAME_CHARS else None
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or frame.get("type") != "cancel":
            await self.send_error(ErrorCode.INVALID)
            return
        await self.cancel_request(frame.get("request"))

    async def disconnect(self, code):
        watch.unregister(self.watched)
        if self.pusher is not None:
            self.pusher.cancel()

    # Command helpers ---------------------------------------------------

    async def cancel_request(self, request_id) -> None:
        """Cancel a queued or running request on whichever process has it."""
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            await self.send_error(ErrorCode.INVALID)
            return
        code = await watch.averify(self.watched)
        if code is not None:
            await self.revoke(code)  # no longer staff, or logged out: refused
            return
        try:
            await control.acancel(request_id=request_id, by=self.user.get_username())
        except control.CancelNotSent:
            await self.send_error(ErrorCode.UNAVAILABLE, CANCEL_NOT_SENT, request=request_id)
            return
        await self.send_json({"type": "cancel.sent", "request": request_id})

    async def send_error(self, code: ErrorCode, message: str | None = None, **fields) -> None:
        """Send an error frame: `code`, and `message` for the console to show
        (default: the code's words, ERROR_TEXT), plus `fields` (`request`)."""
        await self.send_json({"type": "error", "code": code, "message": message or code.text, **fields})

    async def revoke(self, code: int) -> None:
        """Called by the watch when this socket's access ended: stop pushing
        and close with `code` (4401 logged out, 4403 no longer staff)."""
        watch.unregister(self.watched)
        if self.pusher is not None:
            self.pusher.cancel()
            self.pusher = None  # frames racing the close are dropped
        await self.close(code=code)

    async def push_status(self) -> None:
        """Send the console payload until the socket closes (runs as a task)."""
        while True:
            current = control.current()
            if current is not None:
                await self.send_json(current.console_payload())
            await asyncio.sleep(PUSH_INTERVAL_S)
