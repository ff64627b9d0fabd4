"""URLs of the chat pages."""

from django.urls import path

from generation import views

urlpatterns = [
    path("", views.chat, name="chat"),
]
