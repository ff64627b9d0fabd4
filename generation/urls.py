"""URLs of the chat page and its JSON endpoints."""

from django.urls import path

from generation import views

urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/<int:conversation_id>/", views.chat, name="chat-conversation"),
    path("api/conversations/", views.conversation_list, name="conversation-list"),
    path("api/conversations/<int:conversation_id>/", views.conversation_detail, name="conversation-detail"),
    path(
        "api/conversations/<int:conversation_id>/rename/",
        views.conversation_rename,
        name="conversation-rename",
    ),
    path(
        "api/conversations/<int:conversation_id>/delete/",
        views.conversation_delete,
        name="conversation-delete",
    ),
]
