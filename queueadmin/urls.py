"""URLs of the admin console, mounted at /admin/queue/ (before admin/)."""

from django.contrib import admin
from django.urls import path

from queueadmin import views

app_name = "queueadmin"

urlpatterns = [
    path("", admin.site.admin_view(views.console), name="console"),
    path("history.json", admin.site.admin_view(views.history_json), name="history"),
    path("status.json", views.status_json, name="status"),
]
