"""ASGI entry point: HTTP goes to Django, WebSockets to the Channels router.

`get_asgi_application()` runs before any app module is imported, because it
sets up Django (app registry, settings) that the consumers' imports rely on.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatsite.origin import OriginValidator  # noqa: E402
from chatsite.routing import websocket_urlpatterns  # noqa: E402
from generation.recovery import SweepOnFirstRequest  # noqa: E402

# The sweep marks replies a crashed predecessor left generating as interrupted.
application = SweepOnFirstRequest(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)
