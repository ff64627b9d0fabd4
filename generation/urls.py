"""URLs of the chat page, its JSON endpoints and the API keys page."""

from django.urls import path

from generation import views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/<int:conversation_id>/", views.chat, name="chat-conversation"),
    path("keys/", views.api_keys, name="api-keys"),
    path("keys/<int:key_id>/revoke/", views.api_key_revoke, name="api-key-revoke"),
    path("api/conversations/", views.conversation_list, name="conversation-list"),
    path("api/conversations/search/", views.conversation_search, name="conversation-search"),
    path("api/conversations/<int:conversation_id>/", views.conversation_detail, name="conversation-detail"),
    path(
        "api/conversations/<int:conversation_id>/rename/",
        views.conversation_rename,
        name="conversation-rename",
    ),
    path(
        "api/conversations/<int:conversation_id>/sampling/",
        views.conversation_sampling,
        name="conversation-sampling",
    ),
    path(
        "api/conversations/<int:conversation_id>/delete/",
        views.conversation_delete,
        name="conversation-delete",
    ),
    path(
        "api/conversations/<int:conversation_id>/restore/",
        views.conversation_restore,
        name="conversation-restore",
    ),
]
