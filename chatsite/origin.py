"""The WebSocket origin check: sockets only from the site's own origin or a trusted one.

Browsers do not apply the same-origin policy to WebSockets: any page a
logged-in person visits could open /ws/chat/ with their session cookie. The
handshake's `Origin` header is what tells the site's own pages apart, so it
is compared in full, scheme, host and port, exactly as Django compares a
POST's Origin for CSRF (django.middleware.csrf.CsrfViewMiddleware
._origin_verified, Django 5.2): one list of trusted origins,
CSRF_TRUSTED_ORIGINS, serves both. Channels' AllowedHostsOriginValidator,
which this replaces, compared the host name only, so `http://host:9999` or
`https://host` on a plain-http site got through.
"""

import io
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.utils.http import is_same_domain


class _HandshakeRequest(ASGIRequest):
    """The handshake seen as a Django request, so that `get_host()` (Host
    checked against ALLOWED_HOSTS) and `is_secure()` (SECURE_PROXY_SSL_HEADER,
    else the socket's own scheme) judge it exactly as they judge HTTP."""

    def __init__(self, scope):
        # The query string is not needed here, and Django decodes it strictly.
        super().__init__({**scope, "method": "GET", "query_string": b""}, io.BytesIO())

    def _get_scheme(self):
        return "https" if self.scope.get("scheme") in ("wss", "https") else "http"


def origin_allowed(scope) -> bool:
    """Whether a WebSocket handshake's `scope` comes from an allowed origin.

    True when its Origin equals the site's own origin (scheme from
    `is_secure()`, host and port from `get_host()`), equals one of
    CSRF_TRUSTED_ORIGINS, or matches one with a `*.` wildcard (any subdomain,
    same scheme, same port). A missing Origin is refused: browsers always
    send one, so only other programs omit it. Settings are read on every call.
    """
    request = _HandshakeRequest(scope)
    origin = request.META.get("HTTP_ORIGIN")
    if origin is None:
        return False
    try:
        own_origin = f"{'https' if request.is_secure() else 'http'}://{request.get_host()}"
    except DisallowedHost:
        own_origin = None
    if origin == own_origin:
        return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in {candidate for candidate in trusted if "*" not in candidate}:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in map(urlsplit, (candidate for candidate in trusted if "*" in candidate))
        if pattern.scheme == parsed.scheme
    )


class OriginValidator:
    """ASGI middleware for the websocket router: passes a handshake from an
    allowed origin (see `origin_allowed`) to `application`, and refuses any
    other by closing before accepting, which servers answer with HTTP 403,
    as Channels' own validator does."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
