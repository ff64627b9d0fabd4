"""The pages follow the reader's language: the browser's Accept-Language
first, then the switcher's choice (Django's set_language, kept in a cookie)."""

import json
import re

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from generation import services

pytestmark = pytest.mark.django_db


def _config(response) -> dict:
    return json.loads(
        re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', response.text)[1]
    )


def test_accept_language_ja_gives_japanese_pages(client, alice):
    """A Japanese browser gets the login form and the chat page in Japanese,
    with <html lang="ja"> and the error codes worded in Japanese for the
    page's script."""
    login = client.get(reverse("login"), HTTP_ACCEPT_LANGUAGE="ja,en;q=0.8")
    assert '<html lang="ja">' in login.text
    assert "ユーザー名" in login.text and "Username" not in login.text
    client.force_login(alice)
    page = client.get("/", HTTP_ACCEPT_LANGUAGE="ja-JP,ja;q=0.9")
    assert '<html lang="ja">' in page.text
    for word in ("送信", "停止", "新しいチャット", "ログアウト"):
        assert word in page.text
    assert ">Send<" not in page.text
    assert _config(page)["errorText"]["queue_full"].startswith("サーバーが混み合っています")


def test_english_is_the_default(client, alice):
    """A browser that asks for a language the site lacks gets English."""
    client.force_login(alice)
    page = client.get("/", HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9")
    assert '<html lang="en">' in page.text and ">Send<" in page.text
    assert _config(page)["errorText"]["queue_full"].startswith("The server is busy")


def test_the_switcher_sets_the_language_and_it_sticks(alice):
    """The switcher posts to set_language with the page's CSRF token; the
    choice is kept in the language cookie and beats Accept-Language on the
    next pages. Without the token the post is refused."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get("/", HTTP_ACCEPT_LANGUAGE="en")
    assert 'action="/i18n/setlang/"' in page.text and 'value="ja"' in page.text
    refused = client.post(reverse("set_language"), {"language": "ja", "next": "/"})
    assert refused.status_code == 403
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    switched = client.post(
        reverse("set_language"), {"language": "ja", "next": "/keys/", "csrfmiddlewaretoken": token}
    )
    assert switched.status_code == 302 and switched.url == "/keys/"
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "ja"
    keys = client.get("/keys/", HTTP_ACCEPT_LANGUAGE="en")
    assert '<html lang="ja">' in keys.text and "キーを作成" in keys.text


def test_the_script_catalog_is_in_the_readers_language(client):
    """/jsi18n/ defines gettext with the Japanese words for a Japanese
    reader, and the English (no catalog entries) otherwise."""

    def escaped(word):  # the catalog is JSON with \\u escapes
        return json.dumps(word)[1:-1]

    japanese = client.get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="ja")
    assert escaped("再生成") in japanese.text and escaped("キューで待機中") in japanese.text
    english = client.get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="en")
    assert escaped("再生成") not in english.text and "globals.gettext" in english.text


def test_key_dates_are_in_the_readers_format(client, alice):
    """The keys page writes a key's date as the reader's locale does."""
    api_key, _ = services.api_key_create(user=alice, name="仕事用スクリプト")
    client.force_login(alice)
    ja = client.get("/keys/", HTTP_ACCEPT_LANGUAGE="ja").text
    en = client.get("/keys/", HTTP_ACCEPT_LANGUAGE="en").text
    created = api_key.created
    assert f"{created:%Y/%m/%d}" in ja  # Japanese: 2026/12/07 9:05
    assert f"{created.month:02d}/{created.day:02d}/{created:%Y}" in en  # English: 12/07/2026 9:05 a.m.
    assert "仕事用スクリプト" in ja


def test_a_refused_title_is_worded_in_the_readers_language(client, django_user_model):
    """A rename refused for its length answers in Japanese on a Japanese page."""
    user = django_user_model.objects.create_user("kenji", password="pw-12345-long")
    conversation = services.conversation_create(owner=user, title="旅行")
    client.force_login(user)
    client.cookies["django_language"] = "ja"
    response = client.post(
        f"/api/conversations/{conversation.pk}/rename/", {"title": "z" * 300}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "200" in response.json()["error"] and "タイトル" in response.json()["error"]
