"""The socket watch: revoked access and deleted conversations reach open sockets.

A socket is authorised when it connects, but what allowed it can end while
it stays open: the person logs out (perhaps in another tab, served by
another process), staff deactivate the account or take away staff status,
or the password changes (which ends every other session, as Django does).
A conversation can also be deleted while its reply waits or streams. None
of these reaches the socket by itself: chat sockets use no channel layer
(chat must keep working while Redis is down) and the HTTP request may land
on another process. So each process reads the database instead.

Consumers `register` a `Watched` entry once they have accepted a logged-in
user and `unregister` it when they disconnect. While any entry is
registered, one task per process (started lazily on the running loop, ended
when the last entry leaves) checks every CHECK_INTERVAL_S with three queries,
whatever the number of sockets: sessions, users, and the conversations of
live replies (and a fourth, API keys, while API streams are watched). Then:

- a session that is gone or expired, a user who is gone or inactive, or a
  session whose auth hash no longer matches the user's (password changed):
  the entry leaves the watch and its `revoke(4401)` is awaited;
- a user no longer staff, for an entry with `staff_required`: `revoke(4403)`;
- an API key revoked, for an entry with an `api_key_id` (a stream of the
  OpenAI-compatible API, generation.api.call): `revoke(4401)`;
- the conversation of a live reply no longer exists: `conversation_gone(id)`.

`averify(entry)` makes the same check for one entry (two queries); consumers
call it before acting on a frame, so that an action sent before the next
tick is refused. `conversation_deleted(id)` may be called from any thread:
the service that deletes a conversation calls it so that this process stops
the reply at once rather than at the next tick.

Sessions are read in bulk from the session table (the db and cached_db
engines); with another SESSION_ENGINE each session is loaded on its own.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import import_module

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from generation.models import ApiKey, Conversation

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5
UNAUTHENTICATED = 4401  # logged out, session gone or expired, deactivated, password changed
FORBIDDEN = 4403  # still logged in, but no longer allowed (staff status removed)


@dataclass(eq=False)
class Watched:
    """One open socket under watch, registered by its consumer.

    `revoke(code)` closes the socket with `code` and stops its work; it runs
    on the loop, at most once. `conversation_id` is the conversation of the
    socket's live reply (None when there is none); the consumer sets and
    clears it, and `conversation_gone(conversation_id)` is called on the
    loop when that conversation is deleted. `api_key_id` is the key of an
    API request (session_key None): its revoke ends the entry too.
    """

    user_id: object
    session_key: str | None
    revoke: Callable[[int], Awaitable[None]]
    staff_required: bool = False
    conversation_id: int | None = None
    conversation_gone: Callable[[int], None] | None = None
    api_key_id: int | None = None


def session_key_of(scope: dict) -> str | None:
    """The session key of a socket's scope (SessionMiddleware), or None without one."""
    session = scope.get("session")
    return getattr(session, "session_key", None) if session is not None else None


class SocketWatch:
    """The entries of one event loop and the task that checks them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.entries: set[Watched] = set()
        self.task: asyncio.Task | None = None
        self.failing = False

    def add(self, entry: Watched) -> None:
        self.entries.add(entry)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run(), name="generation-watch")

    def discard(self, entry: Watched) -> None:
        self.entries.discard(entry)
        # Nothing left to watch: stop now (the next register starts it again),
        # unless this runs inside the task, which then ends by itself.
        if not self.entries and self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def _run(self) -> None:
        while self.entries:
            await asyncio.sleep(CHECK_INTERVAL_S)
            await self.check()

    async def check(self) -> None:
        """Check every entry once and act on what changed."""
        entries = list(self.entries)
        if not entries:
            return
        try:
            verdicts, gone = await database_sync_to_async(judge)(entries)
        except Exception as error:
            # The database is down: chat cannot work either; keep the sockets
            # and say so once, not twice a second.
            if not self.failing:
                logger.warning("Could not check the open sockets' logins: %s", error)
            self.failing = True
            return
        self.failing = False
        for conversation_id in gone:
            self.cancel_conversation(conversation_id)
        for entry, code in verdicts.items():
            if entry in self.entries:
                await self.revoke(entry, code)

    async def revoke(self, entry: Watched, code: int) -> None:
        self.discard(entry)
        try:
            await entry.revoke(code)
        except Exception:
            logger.exception("Could not close a socket whose access ended")

    def cancel_conversation(self, conversation_id: int) -> None:
        """Stop the live replies of a deleted conversation (on the loop)."""
        for entry in list(self.entries):
            if entry.conversation_id == conversation_id and entry.conversation_gone is not None:
                entry.conversation_gone(conversation_id)


_watch: SocketWatch | None = None


def register(entry: Watched) -> None:
    """Watch `entry` from now on; call on the socket's event loop."""
    global _watch
    loop = asyncio.get_running_loop()
    if _watch is None or _watch.loop is not loop:
        _watch = SocketWatch(loop)  # a new loop (each test runs its own)
    _watch.add(entry)


def unregister(entry: Watched | None) -> None:
    """Stop watching `entry` (None and unknown entries are ignored); on the loop."""
    if entry is not None and _watch is not None:
        _watch.discard(entry)


async def averify(entry: Watched) -> int | None:
    """The close code if `entry`'s access has ended now, else None.

    For a consumer to call before it acts on a frame. Raises what the
    database raises when it cannot be read.
    """
    verdicts, _ = await database_sync_to_async(judge)([entry])
    return verdicts.get(entry)


def conversation_deleted(conversation_id: int) -> None:
    """Stop this process's live reply of `conversation_id`, if any; any thread.

    The deleting service calls it once the delete has committed; other
    processes' watches notice at their next tick.
    """
    watch = _watch
    if watch is None or watch.loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is watch.loop:
        watch.cancel_conversation(conversation_id)
        return
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: its sockets are gone too
        watch.loop.call_soon_threadsafe(watch.cancel_conversation, conversation_id)


# The check, in a worker thread -------------------------------------------


def judge(entries: list[Watched]) -> tuple[dict[Watched, int], set[int]]:
    """The close code of each entry whose access has ended, and the ids of
    the live replies' conversations that no longer exist. Four queries at
    most (sessions, users, conversations, API keys); blocking, so call it
    off the loop."""
    sessions = _sessions({entry.session_key for entry in entries if entry.session_key})
    users = get_user_model()._default_manager.in_bulk({entry.user_id for entry in entries})
    wanted = {entry.conversation_id for entry in entries if entry.conversation_id is not None}
    existing = (
        set(Conversation.objects.filter(pk__in=wanted).values_list("pk", flat=True)) if wanted else set()
    )
    keys = {entry.api_key_id for entry in entries if entry.api_key_id is not None}
    live_keys = (
        set(ApiKey.objects.filter(pk__in=keys, revoked_at__isnull=True).values_list("pk", flat=True))
        if keys
        else set()
    )
    verdicts = {}
    for entry in entries:
        code = _verdict(entry, users.get(entry.user_id), sessions, live_keys)
        if code is not None:
            verdicts[entry] = code
    return verdicts, wanted - existing


def _verdict(entry: Watched, user, sessions: dict[str, dict], live_keys: set[int]) -> int | None:
    """Mirrors django.contrib.auth.get_user and ModelBackend's is_active rule
    (and, for an API key, selectors.api_key_authenticate's)."""
    if user is None or not getattr(user, "is_active", True):
        return UNAUTHENTICATED
    if entry.api_key_id is not None and entry.api_key_id not in live_keys:
        return UNAUTHENTICATED
    if entry.session_key is not None:
        data = sessions.get(entry.session_key)
        if (
            data is None
            or str(data.get(SESSION_KEY)) != str(user.pk)
            or data.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS
            or not _hash_matches(user, data.get(HASH_SESSION_KEY))
        ):
            return UNAUTHENTICATED
    if entry.staff_required and not user.is_staff:
        return FORBIDDEN
    return None


def _hash_matches(user, session_hash: str | None) -> bool:
    if not hasattr(user, "get_session_auth_hash"):
        return True
    if not session_hash:
        return False
    if constant_time_compare(session_hash, user.get_session_auth_hash()):
        return True
    return any(constant_time_compare(session_hash, h) for h in user.get_session_auth_fallback_hash())


def _sessions(keys: set[str]) -> dict[str, dict]:
    """The data of each live (existing, unexpired) session among `keys`."""
    if not keys:
        return {}
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    if hasattr(store_class, "get_model_class"):  # db and cached_db: one query
        rows = (
            store_class.get_model_class()
            .objects.filter(session_key__in=keys, expire_date__gt=timezone.now())
            .values_list("session_key", "session_data")
        )
        decoder = store_class()
        return {key: decoder.decode(data) for key, data in rows}
    return {key: data for key in keys if (data := store_class(session_key=key).load())}
