"""Conversations and their messages, as the chat stores them."""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.crypto import salted_hmac

from generation.runtime.sampling import TEMPERATURE_RANGE


class LiveConversations(models.Manager):
    """Conversations that are not deleted: the default manager, so that every
    read (selectors, the socket watch, the services' existence checks) treats
    a conversation in its undo window as gone."""

    def get_queryset(self):
        return super().get_queryset().filter(deleted_at__isnull=True)


class Conversation(models.Model):
    """One chat thread of one user, titled from its first message.

    `temperature` is the person's choice for this conversation's replies
    (TEMPERATURE_RANGE, 0 is greedy); None takes the site's default
    (generation.runtime.sampling: the model's generation config).

    `deleted_at` is set when the person deletes it: from then on it is gone
    for every read through `objects` (its reply stops), but its rows stay
    for services.DELETE_UNDO_WINDOW so that Undo can bring it back
    (services.conversation_restore); `all_objects` sees those too, and
    services.conversations_purge removes them for good.
    """

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    # Set explicitly by the services when a message arrives, so that the
    # sidebar orders by activity rather than by the last rename.
    updated = models.DateTimeField(auto_now_add=True, db_index=True)
    temperature = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(TEMPERATURE_RANGE[0]), MaxValueValidator(TEMPERATURE_RANGE[1])],
    )
    deleted_at = models.DateTimeField(null=True, blank=True, db_index=True)

    all_objects = models.Manager()
    objects = LiveConversations()

    class Meta:
        ordering = ["-updated", "-id"]
        default_manager_name = "objects"
        base_manager_name = "all_objects"
        indexes = [models.Index(fields=["owner", "-updated"], name="conversation_owner_updated")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """One turn of a conversation: the user's text or the model's reply.

    An assistant message is created when its generation starts (status
    `generating`), its text so far is written every few seconds while it
    streams (never per token), and it is written once more when it ends,
    with its final status, token counts and timings.
    """

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        GENERATING = "generating"
        CANCELLED = "cancelled"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    created = models.DateTimeField(auto_now_add=True)
    request_id = models.CharField(max_length=64, blank=True)
    # The server process generating the reply, so that its successor can
    # tell its own abandoned replies from another live process's.
    worker = models.CharField(max_length=200, blank=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    queue_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)
    # Set when the person regenerated this reply or edited this question (and
    # on the reply of an edited question): kept, never deleted, but no longer
    # shown on the page nor given to the model (services.reply_regenerate,
    # services.user_message_edit).
    superseded = models.BooleanField(default=False)

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["status"], name="message_status")]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} ({self.status})"


class ApiKey(models.Model):
    """A person's key to the OpenAI-compatible API (/v1/), used as
    `Authorization: Bearer <token>`.

    The token ("csk-" and 43 URL-safe characters) is shown once, when the key
    is made (services.api_key_create); only its keyed hash is stored, in
    `digest` (`token_digest`), and its first PREFIX_CHARS characters, in
    `prefix`, so that lists can tell keys apart. A revoked key stays, with
    `revoked_at` set, so that records made with it still name it.
    """

    TOKEN_PREFIX = "csk-"
    PREFIX_CHARS = 12
    # The channel-layer event sent to `group_name` after a revoke commits;
    # holders of open streams on the key (the /v1/ views) stop them at once.
    REVOKED_EVENT = "apikey.revoked"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_CHARS)
    # Unique already makes an index; db_index states the intent.
    digest = models.CharField(max_length=64, unique=True, db_index=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "API key"
        indexes = [models.Index(fields=["user", "-created"], name="apikey_user_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        """Whether the key has been revoked (it no longer authenticates)."""
        return self.revoked_at is not None

    @property
    def group_name(self) -> str:
        """The channel-layer group told when this key is revoked."""
        return self.group_name_for(self.pk)

    @staticmethod
    def group_name_for(key_id: int) -> str:
        """The channel-layer group of the key with id `key_id`: "apikey.<id>"."""
        return f"apikey.{int(key_id)}"

    @staticmethod
    def token_digest(token: str, secret: str | None = None) -> str:
        """The stored form of `token`: HMAC-SHA256 keyed by `secret` (default
        settings.SECRET_KEY), 64 hex digits. Tokens are long and random, so a
        fast keyed hash is enough; a stolen table reveals no usable token.
        Raises UnicodeEncodeError for a string holding a lone surrogate."""
        return salted_hmac("chatsite.apikey", token, secret=secret, algorithm="sha256").hexdigest()
