"""Writes to conversations and messages.

The chat consumer and the HTTP views call these; nothing else writes the
chat's tables. Each function is one transaction.
"""

from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from generation import selectors, text, watch
from generation.models import Conversation, Message
from generation.runtime.types import Timings, Usage

TITLE_CHARS = 60
TITLE_MAX_CHARS = Conversation._meta.get_field("title").max_length


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
def conversation_delete(*, conversation: Conversation) -> None:
    """Delete the conversation and its messages.

    A reply of it that is waiting or streaming must not go on for nobody:
    once the delete commits, this process's live reply of it is cancelled
    (generation.watch); other processes' watches notice within a second.
    """
    conversation_id = conversation.pk
    conversation.delete()
    transaction.on_commit(lambda: watch.conversation_deleted(conversation_id))


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
    if conversation_id is None:
        conversation = Conversation.objects.create(owner=owner, title=title_from_text(content))
    else:
        conversation = selectors.conversation_get(owner=owner, conversation_id=conversation_id)
        if not conversation.title:
            conversation.title = title_from_text(content)
    conversation.updated = timezone.now()
    # An update, not save(): a delete that landed since the read leaves no row
    # to update, and that is the person's not_found, not a server error. Once
    # updated, the row is locked until commit, so it cannot vanish under the insert.
    if not Conversation.objects.filter(pk=conversation.pk).update(
        title=conversation.title, updated=conversation.updated
    ):
        raise Conversation.DoesNotExist(f"Conversation {conversation.pk} was deleted")
    message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=content)
    return message, selectors.conversation_history_for_model(conversation=conversation)


@transaction.atomic
def user_message_fail(*, message_id: int, error_code: str) -> None:
    """Mark a user message whose reply never started (rejected, timed out)."""
    Message.objects.filter(pk=message_id).update(status=Message.Status.ERROR, error_code=error_code)


@transaction.atomic
def user_message_cancel(*, message_id: int) -> None:
    """Mark a user message whose request was cancelled before its reply started
    (Stop while queued, or the socket closed), so the history shows it unanswered."""
    Message.objects.filter(pk=message_id).update(status=Message.Status.CANCELLED)


def assistant_message_start(*, conversation_id: int, request_id: str, worker: str = "") -> Message:
    """Create the reply's row when its generation starts, in status generating,
    marked with the process (`worker`) that generates it.

    Raises Conversation.DoesNotExist when the conversation was deleted while
    the request waited (the foreign key fails when the row is committed).
    """
    try:
        with transaction.atomic():
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
