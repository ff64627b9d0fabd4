"""URLs of the OpenAI-compatible API, mounted at /v1/ (chatsite.urls).

No trailing slashes: clients append the paths to a base URL ending in /v1.
"""

from django.urls import path, re_path

from generation.api import views

urlpatterns = [
    path("models", views.models, name="api-models"),
    path("models/<path:model_id>", views.model_detail, name="api-model"),
    path("chat/completions", views.chat_completions, name="api-chat-completions"),
    re_path(r"^(?P<path>.*)$", views.not_found),
]
