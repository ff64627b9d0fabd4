"""The scripts' translation catalogue (/jsi18n/), cached by the server and the browser.

Django's JavaScriptCatalog reads every djangojs catalogue on each request,
and the browser refetched it with every page. Its content changes only with
a release (the code's marked words) or a translation update (the compiled
djangojs.mo files), so `CATALOG_VERSION` names both: the project's version
from pyproject.toml and the newest djangojs.mo's modification time, read at
start (a deploy restarts the server).

- The pages link to `catalog_url()`: /jsi18n/?v=<version>&l=<language>. A
  browser keeps it a day (Cache-Control max-age), and a new version or
  another language (the switcher) is another URL, so it never shows stale
  words.
- The server keeps one answer per language per version (cache_page; its key
  holds the active language since USE_I18N is on).
- Past the day, the browser asks again with the ETag and gets a 304 while
  nothing changed.
"""

import tomllib
from pathlib import Path

from django.conf import settings
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import get_language
from django.views.decorators.cache import cache_page
from django.views.decorators.http import etag
from django.views.i18n import JavaScriptCatalog

CACHE_S = 86400  # a day


def _project_version() -> str:
    """The version in pyproject.toml ("0" without one)."""
    try:
        with open(Path(settings.BASE_DIR) / "pyproject.toml", "rb") as file:
            return str(tomllib.load(file).get("project", {}).get("version", "0"))
    except OSError:
        return "0"


def _catalogues_stamp() -> int:
    """The newest modification time (whole seconds) of the compiled djangojs
    catalogues; 0 when there are none."""
    stamps = [
        int(path.stat().st_mtime)
        for folder in settings.LOCALE_PATHS
        for path in Path(folder).glob("*/LC_MESSAGES/djangojs.mo")
    ]
    return max(stamps, default=0)


CATALOG_VERSION = f"{_project_version()}-{_catalogues_stamp()}"


def _etag(request, *args, **kwargs) -> str:
    return f"{CATALOG_VERSION}-{get_language()}"


# etag outside: a revalidation that matches is a 304 without touching the cache.
catalog_view = etag(_etag)(
    cache_page(CACHE_S, key_prefix=f"jsi18n-{CATALOG_VERSION}")(JavaScriptCatalog.as_view())
)


def catalog_url() -> str:
    """The catalogue's URL for the active language and this version."""
    return f"{reverse('javascript-catalog')}?{urlencode({'v': CATALOG_VERSION, 'l': get_language()})}"


def catalog_context(request) -> dict:
    """Template context processor: `jsi18n_url`, for the pages' <script src>."""
    return {"jsi18n_url": catalog_url()}
