"""The chat page's JSON endpoints (/api/) answer their errors in JSON.

The page's script reads `{"error": "..."}` with the status; Django's own
refusals are HTML or empty (the 404 page for an Http404 or an unknown URL,
an empty 405 from require_POST, the CSRF failure page, an empty 400). This
middleware rewrites any 4xx answer under /api/ that is not JSON already
into `{"error": <the reason in the reader's language>}`, keeping its status
and its Allow header. Views' own JSON errors pass through unchanged. The
OpenAI-compatible API (/v1/) has its own shape (generation.api.views).
"""

from asgiref.sync import iscoroutinefunction
from django.http import HttpResponse, JsonResponse
from django.utils.decorators import sync_and_async_middleware
from django.utils.translation import gettext as _

API_PREFIX = "/api/"


def _reason(request, response: HttpResponse) -> str:
    """Why the request was refused, for a person (the reader's language)."""
    status = response.status_code
    if status == 404:
        return _("Not found: no such conversation or endpoint.")
    if status == 405:
        return _("%(method)s is not allowed here; use %(allowed)s.") % {
            "method": request.method,
            "allowed": response.get("Allow", "GET"),
        }
    if status == 403:
        if getattr(request, "_csrf_failure", False) or b"CSRF" in response.content:
            return _("The page's security token is missing or old: reload the page and try again.")
        return _("You are not allowed to do this.")
    return _("The request was refused (HTTP %(status)d).") % {"status": status}


def as_json_error(request, response: HttpResponse) -> HttpResponse:
    """`response` as JSON when it is a non-JSON 4xx answer under /api/, else as it is."""
    if (
        not request.path.startswith(API_PREFIX)
        or not 400 <= response.status_code < 500
        or response.get("Content-Type", "").startswith("application/json")
        or getattr(response, "streaming", False)
    ):
        return response
    converted = JsonResponse({"error": _reason(request, response)}, status=response.status_code)
    if "Allow" in response:
        converted["Allow"] = response["Allow"]
    return converted


@sync_and_async_middleware
def api_errors_as_json(get_response):
    """Installed in settings.MIDDLEWARE after LocaleMiddleware (so the reason
    is in the reader's language) and before CsrfViewMiddleware (so its
    refusal passes through here)."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            return as_json_error(request, await get_response(request))

    else:

        def middleware(request):
            return as_json_error(request, get_response(request))

    return middleware
