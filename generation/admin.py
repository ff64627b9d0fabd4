"""Admin for conversations (staff read and tidy them, messages inline) and
for everyone's API keys."""

from django.contrib import admin, messages

from generation import services
from generation.models import ApiKey, Conversation, Message


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


class ApiKeyStateFilter(admin.SimpleListFilter):
    """Live keys (they authenticate, if their owner is active) or revoked ones."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("live", "Live"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "live":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Everyone's API keys, for staff: list, filter, search by owner or name,
    rename, and revoke (the "Revoke selected keys" action). Keys are made by
    their owners on /keys/ or with `manage.py apikey create`, never here: the
    token would have nowhere to be shown. The digest is never shown."""

    list_display = ("name", "user", "prefix", "created", "last_used_at", "revoked_at")
    list_select_related = ("user",)
    list_filter = (ApiKeyStateFilter, "created", "last_used_at")
    search_fields = ("user__username", "name", "prefix")
    fields = ("user", "name", "prefix", "created", "last_used_at", "revoked_at")
    readonly_fields = ("user", "prefix", "created", "last_used_at", "revoked_at")
    actions = ["revoke_selected"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request, queryset):
        """Revoke each selected key that is still live (services.api_key_revoke,
        so open streams on it stop too) and say how many."""
        live = list(queryset.filter(revoked_at__isnull=True))
        for api_key in live:
            services.api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {len(live)} key(s).", messages.SUCCESS)
