"""Reads of conversations, messages and API keys, always scoped to their owner."""

import regex
from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet

from generation import text
from generation.models import ApiKey, Conversation, Message

# No token is longer: checked before hashing, so a megabyte header costs nothing.
_API_TOKEN_MAX_CHARS = 128

# Replies worth showing the model again: finished ones, and stopped ones that
# said something. Errors and empty stubs would only confuse it.
_REPLY_STATUSES = {Message.Status.COMPLETE, Message.Status.CANCELLED, Message.Status.INTERRUPTED}


def conversation_list(*, owner) -> QuerySet[Conversation]:
    """The owner's conversations, most recently active first."""
    return Conversation.objects.filter(owner=owner).order_by("-updated", "-id")


def conversation_get(*, owner, conversation_id: int) -> Conversation:
    """The owner's conversation with this id; raises Conversation.DoesNotExist
    for an unknown id and for another user's, so callers cannot tell them apart."""
    return Conversation.objects.get(owner=owner, pk=conversation_id)


SEARCH_MAX_CHARS = 200
SNIPPET_CHARS = 80
# Scripts written without spaces between words: PostgreSQL's parsers make a
# whole Japanese sentence one token, so a word inside it is never found by
# full-text search; these queries use a substring match instead.
_GRAPHEME = regex.compile(r"\X")
_UNSPACED_SCRIPT = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}]")


def conversation_search(*, owner, query: str, limit: int = 50) -> list[dict]:
    """The owner's conversations whose title or one of whose shown messages
    matches `query`, most recently active first, at most `limit`:
    [{"id", "title", "snippet"}], where `snippet` is a piece (SNIPPET_CHARS
    code points at most, cut between grapheme clusters) of the first matching
    message around the first word of the query, or "" when only the title matched.

    Every word of the query must occur, in the title or in one message. On
    PostgreSQL that is full-text search (the 'simple' configuration: no
    stemming, any language's words); on SQLite, and for queries in a script
    written without spaces (Japanese, Chinese, Korean, Thai), a
    case-insensitive substring match. Deleted and other people's
    conversations are never searched. A blank query finds nothing; only its
    first SEARCH_MAX_CHARS code points are used.
    """
    query = " ".join(text.truncate(query, SEARCH_MAX_CHARS).split())
    if not query:
        return []
    words = query.split()
    messages = Message.objects.filter(
        conversation__owner=owner, conversation__deleted_at__isnull=True, superseded=False
    )
    titles = conversation_list(owner=owner)
    messages = matching(messages, "content", query)
    titles = matching(titles, "title", query)
    matched = messages.values_list("conversation_id", flat=True)
    found = list(
        conversation_list(owner=owner).filter(Q(pk__in=matched) | Q(pk__in=titles.values("pk")))[:limit]
    )
    first: dict[int, str] = {}
    rows = messages.filter(conversation__in=found).order_by("id").values_list("conversation_id", "content")
    for conversation_id, content in rows[:2000]:
        first.setdefault(conversation_id, content)
    return [
        {"id": c.pk, "title": c.title or "New chat", "snippet": _snippet(first.get(c.pk, ""), words[0])}
        for c in found
    ]


def matching(rows: QuerySet, field: str, query: str) -> QuerySet:
    """`rows` whose text `field` holds every word of `query` (already
    normalised by conversation_search): full-text search on PostgreSQL for
    spaced scripts, else a case-insensitive substring match. On PostgreSQL
    the message content's indexes (migration 0007) are written for exactly
    these two expressions."""
    if connection.vendor == "postgresql" and not _UNSPACED_SCRIPT.search(query):
        from django.contrib.postgres.search import SearchQuery, SearchVector

        wanted = SearchQuery(query, config="simple", search_type="websearch")
        return rows.annotate(found=SearchVector(field, config="simple")).filter(found=wanted)
    return rows.filter(_every_word(field, query.split()))


def _every_word(field: str, words: list[str]) -> Q:
    condition = Q()
    for word in words:
        condition &= Q(**{f"{field}__icontains": word})
    return condition


def _snippet(content: str, word: str) -> str:
    """About SNIPPET_CHARS code points of `content` on one line, starting a
    little before `word` (case-insensitively) and cut between grapheme
    clusters, with "…" where text was left out."""
    line = " ".join(content.split())
    if not line:
        return ""
    at = line.casefold().find(word.casefold())
    start = 0
    if at > 20:
        # The first cluster boundary at or after 20 code points before the word.
        start = next((m.start() for m in _GRAPHEME.finditer(line) if m.start() >= at - 20), 0)
    piece = text.truncate(line[start:], SNIPPET_CHARS)
    return ("…" if start else "") + piece + ("…" if start + len(piece) < len(line) else "")


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    """The conversation's messages as the page shows them, oldest first:
    superseded ones (a regenerated reply, an edited question and its reply)
    are left out; they stay in the database."""
    return conversation.messages.filter(superseded=False).order_by("created", "id")


def message_last_turn(*, conversation: Conversation) -> tuple[Message | None, Message | None]:
    """The conversation's last question and the reply that follows it, of the
    messages the page shows: (question, reply), where reply is None when the
    question has none yet (waiting, cancelled or failed before it started)
    and both are None for a conversation with no question. Two rows at most."""
    tail = list(message_list(conversation=conversation).reverse()[:2])
    if not tail:
        return None, None
    if tail[0].role == Message.Role.USER:
        return tail[0], None
    if tail[0].role == Message.Role.ASSISTANT and len(tail) == 2 and tail[1].role == Message.Role.USER:
        return tail[1], tail[0]
    return None, None


def conversation_history_for_model(*, conversation: Conversation) -> list[dict]:
    """The conversation as the `messages` list the generation service takes.

    The newest message (the user's question) is always kept. Earlier user
    messages are kept only when a usable reply follows them, so that a
    failed or unanswered turn does not leave two user turns in a row; the
    service trims the oldest turns itself when the whole does not fit.
    """
    rows = list(message_list(conversation=conversation).values_list("role", "content", "status"))
    history: list[dict] = []
    for index, (role, content, status) in enumerate(rows):
        if role == Message.Role.ASSISTANT:
            if status in _REPLY_STATUSES and content.strip() and history and history[-1]["role"] == "user":
                history.append({"role": "assistant", "content": content})
            continue
        if role == Message.Role.USER:
            is_last = index == len(rows) - 1
            if history and history[-1]["role"] == "user":
                history.pop()  # the previous question got no usable reply
            if status != Message.Status.ERROR or is_last:
                history.append({"role": "user", "content": content})
            continue
        if role == Message.Role.SYSTEM and not history:
            history.append({"role": "system", "content": content})
    return history


def message_serialize(message: Message) -> dict:
    """A message as the page's JavaScript reads it (history endpoint)."""
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "created": message.created.isoformat(),
        "finish_reason": message.finish_reason,
        "error_code": message.error_code,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
        "timings": {"queue_ms": message.queue_ms, "ttft_ms": message.ttft_ms, "total_ms": message.total_ms},
    }


def conversation_serialize(conversation: Conversation) -> dict:
    """A conversation's sidebar entry; `temperature` is null for the site's default."""
    return {
        "id": conversation.pk,
        "title": conversation.title or "New chat",
        "updated": conversation.updated.isoformat(),
        "temperature": conversation.temperature,
    }


def api_key_authenticate(token: str) -> ApiKey | None:
    """The live API key whose token is `token` (what follows "Bearer "), with
    its `user` loaded; None when the token is unknown, malformed, revoked, or
    its owner is inactive (so deactivating a person stops their keys at once).

    The lookup is by digest, so no comparison of secrets happens here. The
    digest under each of settings.SECRET_KEY_FALLBACKS is tried too, so keys
    outlive a SECRET_KEY rotation done the Django way. Does not record the use:
    call services.api_key_touch.
    """
    if (
        not isinstance(token, str)
        or not token.startswith(ApiKey.TOKEN_PREFIX)
        or len(token) > _API_TOKEN_MAX_CHARS
        or not token.isascii()
    ):
        return None
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    digests = [ApiKey.token_digest(token, key) for key in keys]
    return (
        ApiKey.objects.select_related("user")
        .filter(digest__in=digests, revoked_at__isnull=True, user__is_active=True)
        .first()
    )


def api_keys_of(user) -> QuerySet[ApiKey]:
    """`user`'s API keys, revoked ones included, newest first."""
    return ApiKey.objects.filter(user=user).order_by("-created", "-id")


def api_key_get(*, user, key_id: int) -> ApiKey:
    """`user`'s API key with this id; raises ApiKey.DoesNotExist for an unknown
    id and for another user's, so callers cannot tell them apart."""
    return ApiKey.objects.get(user=user, pk=key_id)
