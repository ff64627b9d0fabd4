"""WebSocket URL patterns of the admin console."""

from django.urls import path

from queueadmin.consumers import QueueConsumer

websocket_urlpatterns = [
    path("ws/queue/", QueueConsumer.as_asgi()),
]
