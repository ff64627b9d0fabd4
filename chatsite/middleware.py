"""Request checks that apply to every page.

Django's form fields refuse NUL characters (ProhibitNullCharactersValidator),
but query parameters reach the database unchecked in places Django owns,
such as the admin's list filters (`/admin/generation/conversation/?title=%00`):
PostgreSQL cannot hold NUL in text and raises, which answers 500. Query
strings cannot carry lone surrogates (Django decodes them with replacement),
so NUL is the one character to refuse here.
"""

from asgiref.sync import iscoroutinefunction
from django.http import HttpResponseBadRequest
from django.utils.decorators import sync_and_async_middleware

NUL_REFUSED = "Request parameters must not contain NUL (U+0000) characters.\n"


def _holds_nul(request) -> bool:
    return any(
        "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
    )


@sync_and_async_middleware
def refuse_null_characters(get_response):
    """Answer 400 to a request whose query parameters hold a NUL, before any
    view or database sees it. Installed in settings.MIDDLEWARE."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            if _holds_nul(request):
                return HttpResponseBadRequest(NUL_REFUSED, content_type="text/plain")
            return await get_response(request)

    else:

        def middleware(request):
            if _holds_nul(request):
                return HttpResponseBadRequest(NUL_REFUSED, content_type="text/plain")
            return get_response(request)

    return middleware
