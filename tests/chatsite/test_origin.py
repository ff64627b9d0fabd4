"""The WebSocket origin check: scheme, host and port must all match the site's
own origin or a trusted one, as Django's CSRF check requires of a POST."""

import pytest
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def site(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "chat.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []
    settings.SECURE_PROXY_SSL_HEADER = None
    return settings


async def handshake(origin: str | None, host: str = "127.0.0.1:8000", scheme: str = "ws", headers=()) -> bool:
    """Whether the chat socket's handshake is accepted. Without a session the
    consumer accepts and then closes with 4401; a refused origin never accepts."""
    sent = [(b"host", host.encode()), *headers]
    if origin is not None:
        sent.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=sent)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=10)
    await communicator.disconnect(timeout=10)
    return connected


async def test_the_sites_own_origin_is_accepted():
    """The page's own origin (scheme, host and port of the handshake) opens a socket."""
    assert await handshake("http://127.0.0.1:8000")


@pytest.mark.parametrize(
    "origin",
    [
        "https://127.0.0.1:8000",  # wrong scheme
        "http://127.0.0.1:9999",  # wrong port
        "http://127.0.0.1",  # no port: the default port is another origin
        "http://evil.example:8000",  # wrong host
        "http://127.0.0.1.evil.example:8000",
        "null",  # sandboxed frames and file: pages
    ],
)
async def test_another_origin_is_refused(origin):
    """An origin differing in any part from the site's own is refused."""
    assert not await handshake(origin)


async def test_a_missing_origin_is_refused():
    """Browsers always send Origin; a handshake without one is refused."""
    assert not await handshake(None)


async def test_a_host_outside_allowed_hosts_is_refused():
    """The site's own origin counts only for a Host in ALLOWED_HOSTS."""
    assert not await handshake("http://evil.example:8000", host="evil.example:8000")


async def test_the_scheme_follows_wss_and_the_proxy_header(site):
    """Over wss the site's origin is https; behind a proxy, SECURE_PROXY_SSL_HEADER decides."""
    assert await handshake("https://127.0.0.1:8000", scheme="wss")
    assert not await handshake("http://127.0.0.1:8000", scheme="wss")
    site.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    forwarded = [(b"x-forwarded-proto", b"https")]
    assert await handshake("https://127.0.0.1:8000", headers=forwarded)
    assert not await handshake("http://127.0.0.1:8000", headers=forwarded)


async def test_trusted_origins_are_exact(site):
    """A CSRF_TRUSTED_ORIGINS entry is accepted whatever the Host (a proxy may
    rewrite it), with exactly its scheme, host and port."""
    site.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "http://127.0.0.1:8080"]
    assert await handshake("https://chat.example.com", host="127.0.0.1:8001")
    assert await handshake("http://127.0.0.1:8080", host="127.0.0.1")
    assert not await handshake("http://chat.example.com", host="127.0.0.1:8001")
    assert not await handshake("https://chat.example.com:8443", host="127.0.0.1:8001")
    assert not await handshake("https://www.chat.example.com", host="127.0.0.1:8001")


async def test_wildcard_trusted_origins_cover_subdomains(site):
    """`https://*.example.com` trusts example.com and its subdomains, over https
    on the default port only, as in Django's CSRF check."""
    site.CSRF_TRUSTED_ORIGINS = ["https://*.example.com"]
    assert await handshake("https://eu.example.com", host="127.0.0.1")
    assert await handshake("https://example.com", host="127.0.0.1")
    assert not await handshake("http://eu.example.com", host="127.0.0.1")
    assert not await handshake("https://eu.example.com:8443", host="127.0.0.1")
    assert not await handshake("https://eu.example.com.evil.example", host="127.0.0.1")
    assert not await handshake("https://notexample.com", host="127.0.0.1")
