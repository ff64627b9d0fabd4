"""Conversations and their messages, as the chat stores them."""

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    """One chat thread of one user, titled from its first message."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    # Set explicitly by the services when a message arrives, so that the
    # sidebar orders by activity rather than by the last rename.
    updated = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-updated", "-id"]
        indexes = [models.Index(fields=["owner", "-updated"], name="conversation_owner_updated")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """One turn of a conversation: the user's text or the model's reply.

    An assistant message is created when its generation starts (status
    `generating`) and written once more when it ends, with its final status,
    token counts and timings; tokens in between only travel over the socket.
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

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["status"], name="message_status")]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} ({self.status})"
