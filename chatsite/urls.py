"""Top-level URL configuration: auth, admin and the apps' pages."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("", include("generation.urls")),
]

# Serves static/ when DEBUG is on (make run); production has nginx do it.
urlpatterns += staticfiles_urlpatterns()
