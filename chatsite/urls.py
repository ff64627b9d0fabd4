"""Top-level URL configuration: auth, admin and the apps' pages."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from chatsite.jsi18n import catalog_view
from queueadmin.views import metrics_view

# The admin's pages say whose site they are (the header, and each page's title).
admin.site.site_header = "chatsite"
admin.site.site_title = "chatsite"

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    # The language switcher posts here (Django's set_language, CSRF-checked).
    path("i18n/", include("django.conf.urls.i18n")),
    # The pages' scripts take their words from this catalog (gettext,
    # ngettext, interpolate; locale/*/LC_MESSAGES/djangojs.po).
    # Cached a day at a URL naming version and language (chatsite.jsi18n).
    path("jsi18n/", catalog_view, name="javascript-catalog"),
    # Before admin/, whose catch-all would answer 404 for admin/queue/.
    path("admin/queue/", include("queueadmin.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    # The OpenAI-compatible API (bearer keys only), before the chat's pages.
    path("v1/", include("generation.api.urls")),
    # Browsers ask for /favicon.ico on their own (the admin's pages have no
    # icon link), and a 404 there is a warning in the log on every first visit.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("", include("generation.urls")),
]

# Serves static/ when DEBUG is on (make run); production has nginx do it.
urlpatterns += staticfiles_urlpatterns()
