"""A live daphne server on the tiny model, and Debian's chromium to drive it.

The server runs as a subprocess with its own SQLite file (tests/live.py), so
it is independent of pytest-django's test database. The browser is /usr/bin/chromium; none is ever downloaded.
"""

import os

import pytest

from tests.browser.corpus import MARKDOWN
from tests.browser.corpus import XSS as XSS_CORPUS
from tests.live import daphne, live_env, prepare_database

CHROMIUM = "/usr/bin/chromium"
XSS = "<img src=x onerror=alert(1)>"
USERNAME, PASSWORD = "tester", "browser-pass-123"
STAFF_USERNAME, STAFF_PASSWORD = "keeper", "browser-staff-123"  # for the admin console
# A person's Japanese question and the model's Markdown answer, stored as typed
# (full-width punctuation, an emoji with a joiner, combining and half-width kana).
JAPANESE_TITLE = "東京のおすすめ"
JAPANESE_QUESTION = "東京でおすすめの食べ物は？　3つ教えてください。\U0001f469\u200d\U0001f4bb"  # noqa: RUF001 - full-width Japanese punctuation on purpose
JAPANESE_REPLY = (
    "**東京**のおすすめは次の3つです。\n\n"
    "- 寿司 \U0001f363\n- ラーメン（醤油）\n- か\u3099んもどき、もんじゃ焼き（\uff76\uff9e）\n\n"  # noqa: RUF001 - full-width Japanese punctuation on purpose
    '```python\nprint("こんにちは、世界")\n```\n'
)
CHANGER_USERNAME, CHANGER_PASSWORD = "changer", "browser-change-123"  # whose password a test changes

SEED = f"""
import json
from django.contrib.auth import get_user_model
from generation.models import Conversation, Message
user = get_user_model().objects.create_user({USERNAME!r}, password={PASSWORD!r})
get_user_model().objects.create_user({CHANGER_USERNAME!r}, password={CHANGER_PASSWORD!r})
from django.contrib.auth.models import Permission
keeper = get_user_model().objects.create_user({STAFF_USERNAME!r}, password={STAFF_PASSWORD!r}, is_staff=True)
keeper.user_permissions.add(Permission.objects.get(codename="change_generationsettings"))
conversation = Conversation.objects.create(owner=user, title={XSS!r})
Message.objects.create(conversation=conversation, role="user", content="show me markup")
Message.objects.create(conversation=conversation, role="assistant", content={XSS!r}, status="complete")
# Stored replies for the rendering tests (tests/browser/corpus.py).
markdown = Conversation.objects.create(owner=user, title="Markdown")
Message.objects.create(conversation=markdown, role="user", content="show me Markdown")
Message.objects.create(conversation=markdown, role="assistant", content={MARKDOWN!r}, status="complete")
attacks = Conversation.objects.create(owner=user, title={XSS_CORPUS[:200]!r})
Message.objects.create(conversation=attacks, role="user", content={XSS_CORPUS!r})
Message.objects.create(conversation=attacks, role="assistant", content={XSS_CORPUS!r}, status="complete")
# Japanese both ways, for the language tests (tests/browser/test_languages.py).
japanese = Conversation.objects.create(owner=user, title={JAPANESE_TITLE!r})
Message.objects.create(conversation=japanese, role="user", content={JAPANESE_QUESTION!r})
Message.objects.create(conversation=japanese, role="assistant", content={JAPANESE_REPLY!r}, status="complete")
print(json.dumps({{
    "japanese_conversation": japanese.pk,
    "xss_conversation": conversation.pk,
    "markdown_conversation": markdown.pk,
    "attack_conversation": attacks.pk,
}}))
"""


@pytest.fixture(scope="session")
def chat_server(tiny_model_dir, tmp_path_factory):
    """Base URL and seed ids of a daphne server on the tiny model."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (make system)")
    folder = tmp_path_factory.mktemp("live")
    env = live_env(
        folder / "db.sqlite3",
        model=tiny_model_dir,
        # Long enough that the tiny model is still writing when Stop is clicked,
        # and within the console's bound (half the 8192-token context), since
        # the console test saves the form with it.
        GENERATION_MAX_NEW_TOKENS="4000",
        DEBUG="1",
    )
    seed = prepare_database(env, SEED)
    with daphne(env, folder / "daphne.log") as url:
        yield {"url": url, **seed}


@pytest.fixture(scope="package")
def browser():
    """Headless Debian chromium, shared by the tests of tests/browser (each
    test opens a context of its own: its own cookies and storage). One launch
    costs 1.5 to 3 s here; once per module it was paid eight times. Not
    longer than this package: the sync Playwright API keeps an event loop
    running in this thread while it is open, which would break the asyncio
    tests that follow (this package has none)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, chat_server):
    """A fresh logged-in page; `page.dialogs` records any alert/confirm/prompt."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.dialogs = []

    def on_dialog(dialog):
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(chat_server["url"] + "/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click(".login-card button[type=submit]")  # not the language switcher's buttons
    page.wait_for_selector("#input")
    page.wait_for_function("document.body?.dataset.connected === 'true'")
    yield page
    context.close()
