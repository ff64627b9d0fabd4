"""Admin pages for the live settings, their audit trail and the statistics.

The live console itself is a plain view at /admin/queue/ (queueadmin.views)
inside the admin's look and login; these are the model pages.
"""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from queueadmin import selectors, services
from queueadmin.forms import GenerationSettingsForm
from queueadmin.models import (
    LIMIT_FIELDS,
    GenerationRecord,
    GenerationSettings,
    PriorityClass,
    QueueSnapshot,
    SettingsChange,
)


@admin.register(GenerationSettings)
class GenerationSettingsAdmin(admin.ModelAdmin):
    """The one settings row. Saving audits the change and applies it in every
    process, exactly like the console's form."""

    list_display = (*LIMIT_FIELDS, "version", "updated", "updated_by")
    form = GenerationSettingsForm
    fields = LIMIT_FIELDS
    change_list_template = "admin/queue/settings_change_list.html"

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not GenerationSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def get_changeform_initial_data(self, request):
        # An unsaved row carries the environment's defaults.
        return selectors.generation_settings_get().limits().as_dict()

    def save_model(self, request, obj, form, change):
        saved = services.generation_settings_update(user=request.user, limits=form.limits())
        obj.pk = saved.pk


@admin.register(PriorityClass)
class PriorityClassAdmin(admin.ModelAdmin):
    """The priority classes (issue #15). Saving and deleting go through
    queueadmin.services, as `manage.py priority_class` does: audited in the
    settings' trail and applied live in every process. A class keeps its
    name (delete it and add another to rename)."""

    list_display = ("name", "rank", "members")
    fields = ("name", "rank", "groups", "staff", "api")
    filter_horizontal = ("groups",)

    def get_readonly_fields(self, request, obj=None):
        return ("name",) if obj is not None else ()

    @admin.display(description="members")
    def members(self, obj):
        described = obj.describe()
        names = (
            [f"group {g}" for g in described["groups"]] + ["staff"] * obj.staff + ["API requests"] * obj.api
        )
        return ", ".join(names) or "-"

    def save_model(self, request, obj, form, change):
        # Saved with its groups in save_related, through the service.
        pass

    def save_related(self, request, form, formsets, change):
        data = form.cleaned_data
        saved = services.priority_class_set(
            user=request.user,
            name=form.instance.name if change else data["name"],
            rank=data["rank"],
            groups=[group.name for group in data["groups"]],
            staff=data["staff"],
            api=data["api"],
        )
        form.instance.pk = saved.pk

    def delete_model(self, request, obj):
        services.priority_class_delete(user=request.user, name=obj.name)

    def delete_queryset(self, request, queryset):
        for row in queryset:
            services.priority_class_delete(user=request.user, name=row.name)


@admin.register(SettingsChange)
class SettingsChangeAdmin(admin.ModelAdmin):
    """The audit trail of settings changes; read-only."""

    list_display = ("changed", "username", "summary")
    list_filter = ("changed",)
    search_fields = ("username",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(GenerationRecord)
class GenerationRecordAdmin(admin.ModelAdmin):
    """One row per generation request; read-only statistics. The source
    column and filter show API and browser traffic apart."""

    list_display = (
        "request_id",
        "enqueued_at",
        "user",
        "source",
        "conversation_link",
        "api_key",
        "worker",
        "outcome",
        "queue_wait_ms",
        "ttft_ms",
        "completion_tokens",
    )
    list_filter = (
        "source",
        "outcome",
        ("enqueued_at", admin.DateFieldListFilter),
        ("user", admin.RelatedOnlyFieldListFilter),
        "worker",
    )
    list_select_related = ("user", "conversation", "api_key")
    search_fields = ("request_id", "user__username", "api_key__name", "api_key__prefix")
    date_hierarchy = "enqueued_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="conversation")
    def conversation_link(self, obj):
        if obj.conversation_id is None:
            return "-"
        url = reverse("admin:generation_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation)


@admin.register(QueueSnapshot)
class QueueSnapshotAdmin(admin.ModelAdmin):
    """Each process's queue every few seconds while busy; read-only."""

    list_display = ("taken", "worker", "running", "waiting", "cap", "tokens", "interval_s")
    list_filter = ("worker", ("taken", admin.DateFieldListFilter))
    date_hierarchy = "taken"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
