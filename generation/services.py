"""Writes to conversations, messages and API keys.

The chat consumer, the HTTP views and the `apikey` command call these;
nothing else writes the chat's tables. Each function is one transaction.
"""

import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext

from generation import selectors, text, watch
from generation.models import ApiKey, Conversation, Message
from generation.runtime.sampling import check_sampling
from generation.runtime.types import Timings, Usage

TITLE_CHARS = 60
TITLE_MAX_CHARS = Conversation._meta.get_field("title").max_length
API_KEY_NAME_MAX_CHARS = ApiKey._meta.get_field("name").max_length
# last_used_at is a hint for people ("used 3 minutes ago"), not an audit log
# (the generation records are): one write a minute per key at most.
API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)
# How long a deleted conversation can be brought back (the page offers Undo
# for a few seconds of it; the rest is slack for a slow click or network).
DELETE_UNDO_WINDOW = timedelta(minutes=1)

logger = logging.getLogger(__name__)


def title_from_text(content: str) -> str:
    """A sidebar title from a message's storable `content`: its words on one
    line, cut at a word (never inside a grapheme cluster) near TITLE_CHARS
    code points, with "…" when cut."""
    line = " ".join(content.split())
    if text.length(line) <= TITLE_CHARS:
        return line
    head = text.truncate(line, TITLE_CHARS)
    return (head.rsplit(" ", 1)[0] or head) + "…"


@transaction.atomic
def conversation_create(*, owner, title: str = "") -> Conversation:
    """Start an empty conversation for `owner`; a title longer than
    TITLE_MAX_CHARS is cut between grapheme clusters.
    Raises text.TextRefused for a title that cannot be stored (NUL, lone surrogate)."""
    title = text.truncate(title, TITLE_MAX_CHARS)
    return Conversation.objects.create(
        owner=owner, title=text.check(title, what="title", limit=TITLE_MAX_CHARS)
    )


@transaction.atomic
def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    """Give the conversation a new title, its runs of whitespace made one space.

    Raises text.TextRefused (nothing saved) for a title that cannot be stored
    or is longer than TITLE_MAX_CHARS code points: the person's own words are
    refused with a reason rather than cut. Raises Conversation.DoesNotExist
    when the conversation was deleted meanwhile (another tab, another process).
    """
    title = text.check(" ".join(title.split()), what="title", limit=TITLE_MAX_CHARS)
    # An update, not save(update_fields=...), which raises a bare DatabaseError
    # when a delete landed since the conversation was read.
    if not Conversation.objects.filter(pk=conversation.pk).update(title=title):
        raise Conversation.DoesNotExist("The conversation was deleted.")
    conversation.title = title
    return conversation


@transaction.atomic
def conversation_set_temperature(*, conversation: Conversation, temperature: float | None) -> Conversation:
    """Set the temperature of the conversation's next replies (0 to 2; 0 is
    greedy), or None for the site's default. Replies already running keep
    theirs. Raises ValueError (nothing saved) for anything else, bool
    included, and Conversation.DoesNotExist when the conversation was
    deleted meanwhile."""
    check_sampling(temperature=temperature)
    temperature = None if temperature is None else float(temperature)
    if not Conversation.objects.filter(pk=conversation.pk).update(temperature=temperature):
        raise Conversation.DoesNotExist("The conversation was deleted.")
    conversation.temperature = temperature
    return conversation


@transaction.atomic
def conversation_delete(*, conversation: Conversation) -> None:
    """Delete the conversation: gone at once for every read, its rows kept
    for DELETE_UNDO_WINDOW so that conversation_restore can bring it back.

    A reply of it that is waiting or streaming must not go on for nobody:
    once the delete commits, this process's live reply of it is cancelled
    (generation.watch); other processes' watches notice within a second.
    Conversations deleted longer ago than the window (anyone's) are removed
    for good here too (conversations_purge).
    """
    conversation_id = conversation.pk
    now = timezone.now()
    Conversation.objects.filter(pk=conversation_id).update(deleted_at=now)
    conversation.deleted_at = now
    conversations_purge(before=now - DELETE_UNDO_WINDOW)
    transaction.on_commit(lambda: watch.conversation_deleted(conversation_id))


@transaction.atomic
def conversation_restore(*, owner, conversation_id: int) -> Conversation:
    """Undo the owner's delete of the conversation, within DELETE_UNDO_WINDOW.

    Its reply does not come back (the delete stopped it; Retry or Regenerate
    asks again). Raises Conversation.DoesNotExist for an id that is not the
    owner's, not deleted, or deleted longer ago than the window.
    """
    cutoff = timezone.now() - DELETE_UNDO_WINDOW
    restored = Conversation.all_objects.filter(owner=owner, pk=conversation_id, deleted_at__gt=cutoff).update(
        deleted_at=None
    )
    if not restored:
        raise Conversation.DoesNotExist("No deleted conversation to restore.")
    return Conversation.objects.get(pk=conversation_id)


@transaction.atomic
def conversations_purge(*, before: datetime) -> int:
    """Remove for good the conversations (and their messages) deleted before
    `before`; returns how many. Called by conversation_delete, by each
    running service's control every PURGE_INTERVAL_S (queueadmin.control)
    and by `manage.py purge_deleted` (which a timer runs), so that nobody's
    next delete is needed."""
    _, per_model = Conversation.all_objects.filter(deleted_at__lt=before).delete()
    return per_model.get(Conversation._meta.label, 0)


class NotLastTurn(Exception):
    """Only the conversation's last question may be edited, and only the reply
    that follows it regenerated; raised (nothing changed) for any other message."""


class ReplyInProgress(Exception):
    """The conversation's last reply is still being written; it cannot be
    regenerated or its question edited until it ends (or is stopped)."""


def _conversation_touch(*, owner, conversation_id: int | None, content: str) -> Conversation:
    """The owner's conversation (None: a new one titled from `content`), its
    activity time set to now, inside the caller's transaction.

    An update, not save(): a delete that landed since the read leaves no row
    to update, and that is the person's not_found, not a server error. Once
    updated, the row is locked until commit, so it cannot vanish under the
    caller's inserts, and two edits of one conversation take turns.
    """
    if conversation_id is None:
        return Conversation.objects.create(owner=owner, title=title_from_text(content))
    conversation = selectors.conversation_get(owner=owner, conversation_id=conversation_id)
    if not conversation.title:
        conversation.title = title_from_text(content)
    conversation.updated = timezone.now()
    if not Conversation.objects.filter(pk=conversation.pk).update(
        title=conversation.title, updated=conversation.updated
    ):
        raise Conversation.DoesNotExist(f"Conversation {conversation.pk} was deleted")
    return conversation


@transaction.atomic
def user_message_create(*, owner, conversation_id: int | None, content: str) -> tuple[Message, list[dict]]:
    """Store the user's message, before any generation is asked for.

    `conversation_id` None starts a new conversation titled from `content`.
    Returns the message and the history to hand the generation service.
    Raises Conversation.DoesNotExist when the id is not one of `owner`'s,
    also when the conversation is deleted while the message is stored, and
    text.TextRefused (nothing stored) for content that cannot be stored; the
    socket checks the same first (events.parse_client_frame).
    """
    text.check(content, what="message", limit=settings.CHAT_MAX_MESSAGE_CHARS)
    conversation = _conversation_touch(owner=owner, conversation_id=conversation_id, content=content)
    message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=content)
    return message, selectors.conversation_history_for_model(conversation=conversation)


def _last_turn(conversation: Conversation, message_id: int, *, question_only: bool):
    """The last (question, reply) of `conversation` when `message_id` names
    its last message the way the action needs (the question, for an edit;
    the reply, or the question if it has none, for a regenerate); raises
    NotLastTurn otherwise and ReplyInProgress while the reply is generating."""
    question, reply = selectors.message_last_turn(conversation=conversation)
    if question is None:
        raise NotLastTurn(f"Conversation {conversation.pk} has no question to answer again")
    named = question if (question_only or reply is None) else reply
    if named.pk != message_id:
        raise NotLastTurn(f"Message {message_id} is not the last of conversation {conversation.pk}")
    if reply is not None and reply.status == Message.Status.GENERATING:
        raise ReplyInProgress(f"Reply {reply.pk} is still being written")
    return question, reply


@transaction.atomic
def reply_regenerate(*, owner, conversation_id: int, message_id: int) -> tuple[Message, list[dict]]:
    """Ask again: supersede the conversation's last reply, `message_id`, so
    that a new reply to the same question can be requested.

    `message_id` may also name the last question when it has no reply (it
    was stopped or failed before one started); its status is then reset to
    complete. The superseded reply stays in the database, hidden from the
    page and from the model. Returns the question and the history to hand
    the generation service, which ends with that question.
    Raises Conversation.DoesNotExist (not `owner`'s, or deleted), NotLastTurn
    and ReplyInProgress; nothing is changed then.
    """
    conversation = _conversation_touch(owner=owner, conversation_id=conversation_id, content="")
    question, reply = _last_turn(conversation, message_id, question_only=False)
    if reply is not None:
        Message.objects.filter(pk=reply.pk).update(superseded=True)
    Message.objects.filter(pk=question.pk).update(status=Message.Status.COMPLETE, error_code="")
    question.status, question.error_code = Message.Status.COMPLETE, ""
    return question, selectors.conversation_history_for_model(conversation=conversation)


@transaction.atomic
def user_message_edit(
    *, owner, conversation_id: int, message_id: int, content: str
) -> tuple[Message, list[dict]]:
    """Fix a question: store `content` as a new question in place of the
    conversation's last one, `message_id`, which is superseded together with
    its reply (both stay in the database, hidden from the page and the model).

    `content` is checked exactly as a new message's (text.check). Returns the
    new question and the history to hand the generation service. Raises
    text.TextRefused, Conversation.DoesNotExist, NotLastTurn and
    ReplyInProgress; nothing is changed then.
    """
    text.check(content, what="message", limit=settings.CHAT_MAX_MESSAGE_CHARS)
    conversation = _conversation_touch(owner=owner, conversation_id=conversation_id, content=content)
    question, reply = _last_turn(conversation, message_id, question_only=True)
    Message.objects.filter(pk__in=[m.pk for m in (question, reply) if m is not None]).update(superseded=True)
    message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=content)
    return message, selectors.conversation_history_for_model(conversation=conversation)


@transaction.atomic
def user_message_fail(*, message_id: int, error_code: str) -> None:
    """Mark a user message whose reply never started (rejected, timed out)."""
    Message.objects.filter(pk=message_id).update(status=Message.Status.ERROR, error_code=error_code)


@transaction.atomic
def user_message_cancel(*, message_id: int, error_code: str = "") -> None:
    """Mark a user message whose request was cancelled before its reply started
    (Stop while queued, the page gone for longer than the re-attach grace, or
    staff: then `error_code` is "cancelled_by_staff"), so the history shows it
    unanswered."""
    Message.objects.filter(pk=message_id).update(status=Message.Status.CANCELLED, error_code=error_code)


def assistant_message_start(*, conversation_id: int, request_id: str, worker: str = "") -> Message:
    """Create the reply's row when its generation starts, in status generating,
    marked with the process (`worker`) that generates it.

    Raises Conversation.DoesNotExist when the conversation was deleted while
    the request waited (marked deleted, or its row gone: the foreign key
    fails when the row is committed).
    """
    try:
        with transaction.atomic():
            if not Conversation.objects.filter(pk=conversation_id).exists():
                raise Conversation.DoesNotExist(f"Conversation {conversation_id} was deleted")
            return Message.objects.create(
                conversation_id=conversation_id,
                role=Message.Role.ASSISTANT,
                status=Message.Status.GENERATING,
                request_id=request_id,
                worker=worker,
            )
    except IntegrityError:
        if Conversation.objects.filter(pk=conversation_id).exists():
            raise
        raise Conversation.DoesNotExist(f"Conversation {conversation_id} was deleted") from None


@transaction.atomic
def assistant_message_save_partial(*, message_id: int, content: str) -> None:
    """Save the text so far of a reply that is still being written, so that a
    crash or restart loses only what came since. Called every few seconds
    while it streams, never per token; a reply that has ended meanwhile (its
    row no longer `generating`) is left alone, so this never overwrites the
    final text."""
    Message.objects.filter(pk=message_id, status=Message.Status.GENERATING).update(
        content=text.storable(content)
    )


@transaction.atomic
def assistant_message_finish(
    *,
    message_id: int,
    content: str,
    status: str,
    finish_reason: str = "",
    error_code: str = "",
    usage: Usage | None = None,
    timings: Timings | None = None,
) -> None:
    """Write the reply once, at its end: text, final status, counts, timings.

    Unconditional on the row's current status, so that a reply that another
    process's startup sweep marked interrupted still gets its true ending.
    A reply whose conversation was deleted has no row left: nothing is written.
    """
    Message.objects.filter(pk=message_id).update(
        # The model's text is untrusted too, and a reply is never refused: what
        # the database cannot hold (a NUL token) is stored as U+FFFD.
        content=text.storable(content),
        status=status,
        finish_reason=finish_reason,
        error_code=error_code,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        queue_ms=timings.queue_ms if timings else None,
        ttft_ms=timings.ttft_ms if timings else None,
        total_ms=timings.total_ms if timings else None,
    )


@transaction.atomic
def messages_mark_interrupted(*, before: datetime, is_dead: Callable[[str], bool]) -> int:
    """Mark replies that a dead process left `generating` as interrupted.

    `is_dead(worker)` decides, per worker name, whether its process is gone;
    replies created at or after `before` are left alone, since they belong to
    the process doing the sweep. Returns the number of messages marked.
    """
    generating = Message.objects.filter(status=Message.Status.GENERATING, created__lt=before)
    workers = set(generating.values_list("worker", flat=True))
    dead = [worker for worker in workers if is_dead(worker)]
    return generating.filter(worker__in=dead).update(status=Message.Status.INTERRUPTED)


@transaction.atomic
def api_key_create(*, user, name: str) -> tuple[ApiKey, str]:
    """Make a new API key for `user`, named `name` (its runs of whitespace
    made one space; any other Unicode is kept).

    Returns the key and its token ("csk-" + 43 URL-safe characters). The token
    is not stored anywhere (only its digest, ApiKey.token_digest), so this is
    the one chance to show it. Raises text.TextRefused (nothing saved) for a
    name that is empty or shows nothing (text.visible), longer than API_KEY_NAME_MAX_CHARS code points, or
    cannot be stored (NUL, lone surrogate).
    """
    name = text.check(" ".join(name.split()), what="name", limit=API_KEY_NAME_MAX_CHARS)
    if not text.visible(name):
        raise text.TextRefused(gettext("Give the key a name, such as the program that will use it."))
    token = ApiKey.TOKEN_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        user=user, name=name, prefix=token[: ApiKey.PREFIX_CHARS], digest=ApiKey.token_digest(token)
    )
    return api_key, token


def _broadcast_revoked(key_id: int) -> None:
    """Tell the holders of streams on key `key_id` that it is revoked; called after commit."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            ApiKey.group_name_for(key_id), {"type": ApiKey.REVOKED_EVENT, "key": key_id}
        )
    except Exception:
        # The revoke is saved and every new request is refused; only streams
        # already open run on to their end.
        logger.exception("Could not announce the revoke of API key %s", key_id)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> None:
    """Revoke `api_key`: it stops authenticating at once, and after the commit
    the event {"type": ApiKey.REVOKED_EVENT, "key": <id>} goes to its group
    (ApiKey.group_name) so that streams open on it stop too.

    Revoking a revoked key keeps the first revoke's time (and announces it
    again, which is harmless). Must not be called from a running event loop's
    thread (the announcement uses async_to_sync): async code calls it through
    sync_to_async.
    """
    now = timezone.now()
    if ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=now):
        api_key.revoked_at = now
    else:  # revoked already, here or elsewhere: keep that time
        first = ApiKey.objects.filter(pk=api_key.pk).values_list("revoked_at", flat=True).first()
        api_key.revoked_at = first or api_key.revoked_at
    key_id = api_key.pk
    transaction.on_commit(lambda: _broadcast_revoked(key_id))


def api_key_renew_digest(*, api_key: ApiKey, token: str) -> bool:
    """Re-make `api_key`'s stored digest under the current SECRET_KEY when
    it was made under one of SECRET_KEY_FALLBACKS; True when it wrote.

    Called by the API after `token` authenticated `api_key`, so a key used
    while a rotation is under way outlives the removal of the old secret,
    as Django renews a session's auth hash (django.contrib.auth.get_user).
    A key not used until the fallback is gone stops working then.
    """
    digest = ApiKey.token_digest(token, settings.SECRET_KEY)
    if api_key.digest == digest:
        return False
    api_key.digest = digest
    api_key.save(update_fields=["digest"])
    return True


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record that `api_key` was just used: sets last_used_at to now unless it
    is less than API_KEY_TOUCH_INTERVAL old, so a busy key costs one write a
    minute (across every process: the condition is in the UPDATE). Called by
    the API on each authenticated request; the instance's last_used_at is
    kept current when written.
    """
    now = timezone.now()
    cutoff = now - API_KEY_TOUCH_INTERVAL
    if api_key.last_used_at is not None and api_key.last_used_at > cutoff:
        return  # fresh as far as this instance knows: no query at all
    written = ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff), pk=api_key.pk
    ).update(last_used_at=now)
    if written:
        api_key.last_used_at = now
