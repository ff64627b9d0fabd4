"""WebSocket URL patterns of the chat."""

from django.urls import path

from generation.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
]
