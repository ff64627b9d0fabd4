"""The admin console (/admin/queue/), its JSON endpoints, and /metrics.

The console page and history.json are wrapped in `admin.site.admin_view`
(see queueadmin.urls), so anyone but active staff gets the admin login.
status.json is for scripts: it answers 401 without a login and 403 for
non-staff instead of redirecting.
"""

import time

from django.conf import settings
from django.contrib import messages
from django.contrib.admin import site
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods

from generation.runtime.registry import get_service
from queueadmin import control, metrics, selectors, services
from queueadmin.forms import GenerationSettingsForm

HISTORY_S = 3600


CHANGE_PERMISSION = "queueadmin.change_generationsettings"


@require_http_methods(["GET", "POST"])
def console(request):
    """The live console, and the settings form that changes every process's limits.

    Every staff member may watch and cancel; saving the limits needs the same
    permission as the Generation settings admin page (403 otherwise), so that
    taking it away in the admin takes it away here too.
    """
    can_change = request.user.has_perm(CHANGE_PERMISSION)
    if request.method == "POST" and not can_change:
        raise PermissionDenied("Changing the limits needs the 'Can change generation settings' permission.")
    form = GenerationSettingsForm(request.POST or None, instance=selectors.generation_settings_get())
    if not can_change:
        for field in form.fields.values():
            field.disabled = True
    if request.method == "POST" and form.is_valid():
        saved = services.generation_settings_update(user=request.user, limits=form.limits())
        # Only each process knows what it runs: the table shows it, live.
        messages.success(
            request,
            _("Settings saved as version %(version)s; each process below shows the version it runs.")
            % {"version": saved.version},
        )
        return redirect("queueadmin:console")
    context = {
        **site.each_context(request),
        "title": _("Queue console"),
        "form": form,
        "can_change": can_change,
        "changes": selectors.settings_changes_recent(),
        "settings_check_s": settings.QUEUEADMIN_SETTINGS_CHECK_S,
        "priority_classes": _with_waits(selectors.priority_classes_list()),
        "ageing_s": settings.GENERATION_PRIORITY_AGEING_S,
    }
    return render(request, "admin/queue/console.html", context, status=400 if form.errors else 200)


def _with_waits(classes: list) -> list:
    """Each class with its `waits` ({"p50", "p95", "count"} ms, or None)
    over the last hour; the default class is not a row, so it is left out."""
    waits = selectors.queue_waits_by_class(since=time.time() - HISTORY_S)
    for row in classes:
        row.waits = waits.get(row.name)
    return classes


@require_GET
def history_json(request):
    """Running, waiting and tokens/s of the last hour, from the snapshots."""
    return JsonResponse(selectors.snapshot_series(since=time.time() - HISTORY_S))


@require_GET
async def status_json(request):
    """The console's live payload (every process and the total) for scripts."""
    user = await request.auser()
    if not user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    if not (user.is_active and user.is_staff):
        return JsonResponse({"error": "staff only"}, status=403)
    get_service()  # this process joins the cluster view if it had not yet
    return JsonResponse(control.current().console_payload())


@require_GET
async def metrics_view(request):
    """Prometheus text for this process; loopback or METRICS_TOKEN only."""
    if not metrics.metrics_allowed(request):
        return HttpResponseForbidden("Forbidden: /metrics is for loopback or a bearer token.\n")
    get_service()  # so the gauges describe a live service
    return HttpResponse(metrics.render(), content_type=metrics.CONTENT_TYPE)
