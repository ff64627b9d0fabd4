"""WebSocket URL patterns of every app, gathered for the ASGI router."""

from generation.routing import websocket_urlpatterns as generation_patterns
from queueadmin.routing import websocket_urlpatterns as queueadmin_patterns

websocket_urlpatterns: list = [*generation_patterns, *queueadmin_patterns]
