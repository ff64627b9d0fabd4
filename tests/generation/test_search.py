"""Search over one's own conversations (selectors.conversation_search and its
view), on SQLite here and on the real PostgreSQL through
test_the_same_cases_pass_on_postgresql."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django.urls import reverse

from generation import selectors, services
from generation.models import Message

pytestmark = pytest.mark.django_db


def conversation(owner, title, *contents, superseded=()):
    made = services.conversation_create(owner=owner, title=title)
    for index, content in enumerate(contents):
        role = "user" if index % 2 == 0 else "assistant"
        Message.objects.create(
            conversation=made, role=role, content=content, superseded=content in superseded
        )
    return made


def found(owner, query):
    return [r["id"] for r in selectors.conversation_search(owner=owner, query=query)]


def test_titles_and_messages_of_ones_own_conversations_are_found(alice, bob):
    """A word of a title or of a message finds the conversation; every word
    must occur; another person's, a deleted and a superseded text are never found."""
    trip = conversation(alice, "Summer trip", "Where should we go in August?", "Try the coast of Brittany.")
    soup = conversation(alice, "Cooking", "How long do I boil an egg?", "About seven minutes for soup.")
    conversation(bob, "Summer trip", "Brittany or Normandy?")
    gone = conversation(alice, "Brittany notes", "Brittany again")
    services.conversation_delete(conversation=gone)
    conversation(alice, "Old", "Brittany old answer", superseded=("Brittany old answer",))

    assert found(alice, "summer") == [trip.pk]
    assert found(alice, "Brittany") == [trip.pk]
    assert found(alice, "boil egg") == [soup.pk]
    assert found(alice, "boil coast") == []
    assert found(alice, "Normandy") == []
    assert found(alice, "   ") == []


def test_japanese_words_inside_sentences_are_found(alice):
    """Japanese is written without spaces: a word in the middle of a sentence
    (message or title) finds its conversation, in kanji, kana and mixed with Latin."""
    weather = conversation(
        alice, "天気の相談", "東京の明日の天気は晴れですか?", "明日は晴れのち曇りでしょう。"
    )
    plans = conversation(alice, "夏休みの計画を立てる", "Pythonの使い方を教えて")
    assert found(alice, "天気") == [weather.pk]
    assert found(alice, "晴れのち") == [weather.pk]
    assert found(alice, "計画") == [plans.pk]
    assert found(alice, "使い方") == [plans.pk]
    assert found(alice, "カレー") == []


def test_a_result_says_where_the_words_are(alice):
    """The snippet is a piece of the first matching message around the word,
    never cut inside an emoji, with "…" where text was left out."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    long = f"{family} " * 30 + "the password for the garden shed is in the blue box " + f"{family} " * 30
    made = conversation(alice, "Notes", long)
    [result] = selectors.conversation_search(owner=alice, query="garden")
    assert result["id"] == made.pk and result["title"] == "Notes"
    snippet = result["snippet"]
    assert snippet.startswith("…") and snippet.endswith("…")
    assert "garden shed" in snippet
    assert len(snippet) <= selectors.SNIPPET_CHARS + 2
    assert snippet.strip("…").strip(" ").replace(family, "").replace(" ", "").isascii()  # no half emoji
    assert selectors.conversation_search(owner=alice, query="notes")[0]["snippet"] == ""


def test_search_over_http_is_owner_only_and_needs_login(client, alice, bob):
    """GET /api/conversations/search/?q= answers the person's own matches, and 401 when logged out."""
    mine = conversation(alice, "Recipes", "カレーの作り方")
    conversation(bob, "Recipes", "カレーの作り方")
    url = reverse("conversation-search")
    assert client.get(url, {"q": "カレー"}).status_code == 401
    client.force_login(alice)
    results = client.get(url, {"q": "カレー"}).json()["results"]
    assert [(r["id"], r["title"], r["snippet"]) for r in results] == [(mine.pk, "Recipes", "カレーの作り方")]
    assert client.get(url).json() == {"results": []}


def test_on_postgresql_the_search_can_use_its_indexes():
    """The message filter the search writes (selectors.matching) matches the
    migration's index expressions (0007): full text for a spaced query,
    trigrams for a Japanese one. Sequential scans are priced out so that the
    plan shows whether the index is usable at all, whatever the table's size."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only (run by test_the_same_cases_pass_on_postgresql)")
    for query, index in (
        ("zanzibar", "generation_message_content_fts"),
        ("富士山頂", "generation_message_content_trgm"),
    ):
        sql, params = (
            selectors.matching(Message.objects.all(), "content", query).values("id").query.sql_with_params()
        )
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert index in plan, plan


def test_the_same_cases_pass_on_postgresql():
    """This module against the real PostgreSQL (127.0.0.1:5432; full-text
    search for spaced scripts), in a subprocess with its own test database."""
    if connection.vendor == "postgresql":
        pytest.skip("already on PostgreSQL")
    database = f"postgres://postgres@127.0.0.1:5432/chatsite_search_{os.getpid()}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "DATABASE_URL": database},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 passed, 1 skipped" in result.stdout
