"""/jsi18n/ (the scripts' words) is cached: a day in the browser, revalidated by ETag."""

import pytest
from django.test import Client
from django.urls import reverse

from chatsite.jsi18n import CATALOG_VERSION

pytestmark = pytest.mark.django_db


def test_the_catalog_is_kept_a_day_and_revalidated_by_etag():
    """The answer may be kept a day; asked again with its ETag, the server
    answers 304 without a body."""
    client = Client()
    first = client.get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="ja")
    assert first.status_code == 200
    assert "max-age=86400" in first["Cache-Control"]
    assert CATALOG_VERSION in first["ETag"] and "ja" in first["ETag"]
    again = client.get(
        reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="ja", HTTP_IF_NONE_MATCH=first["ETag"]
    )
    assert again.status_code == 304 and not again.content


def test_each_language_has_its_own_etag_and_words():
    """A cached Japanese catalogue is never served to an English reader."""
    client = Client()
    japanese = client.get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="ja")
    english = client.get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="en")
    assert japanese["ETag"] != english["ETag"]
    assert japanese.content != english.content
    revalidated = client.get(
        reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="en", HTTP_IF_NONE_MATCH=japanese["ETag"]
    )
    assert revalidated.status_code == 200


def test_pages_link_a_url_naming_version_and_language(alice):
    """The page's script URL changes with the language (the switcher) and the
    version, so a browser's kept copy is never the wrong one."""
    client = Client()
    client.force_login(alice)
    ja = client.get("/keys/", HTTP_ACCEPT_LANGUAGE="ja").text
    en = client.get("/keys/", HTTP_ACCEPT_LANGUAGE="en").text
    assert f'src="/jsi18n/?v={CATALOG_VERSION}&amp;l=ja"' in ja
    assert f'src="/jsi18n/?v={CATALOG_VERSION}&amp;l=en"' in en


def test_the_console_links_the_versioned_catalog(admin_user):
    """The staff console (an admin page) links the same versioned URL."""
    client = Client()
    client.force_login(admin_user)
    page = client.get("/admin/queue/", HTTP_ACCEPT_LANGUAGE="ja").text
    assert f'src="/jsi18n/?v={CATALOG_VERSION}&amp;l=ja"' in page
