"""Admin for conversations: staff read and tidy them, messages inline."""

from django.contrib import admin

from generation.models import Conversation, Message


class MessageInline(admin.TabularInline):
    """A conversation's messages, oldest first, read-only apart from deletion."""

    model = Message
    extra = 0
    fields = ("created", "role", "status", "content", "completion_tokens", "ttft_ms", "total_ms")
    readonly_fields = fields
    ordering = ("created", "id")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    """Conversations, searchable by their owner's username and by title."""

    list_display = ("title", "owner", "created", "updated")
    list_select_related = ("owner",)
    search_fields = ("owner__username", "title")
    readonly_fields = ("created", "updated")
    raw_id_fields = ("owner",)
    inlines = [MessageInline]
