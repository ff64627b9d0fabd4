"""The reader's language for a WebSocket, chosen as for the page's requests."""

from django.http import HttpRequest, parse_cookie
from django.utils import translation


def language_of(scope: dict) -> str:
    """The language code (one of settings.LANGUAGES) Django's LocaleMiddleware
    would pick for an HTTP request with this socket's headers: the
    language cookie set_language sets, else Accept-Language, else
    LANGUAGE_CODE. Reads the raw headers, so it works with or without
    Channels' CookieMiddleware."""
    headers = {name.lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    request = HttpRequest()
    request.COOKIES = scope.get("cookies") or parse_cookie(headers.get(b"cookie", ""))
    if b"accept-language" in headers:
        request.META["HTTP_ACCEPT_LANGUAGE"] = headers[b"accept-language"]
    return translation.get_language_from_request(request)
