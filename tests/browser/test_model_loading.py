"""The chat page while the model loads, against a live daphne whose model
load waits for the test (tests/browser/gated_asgi.py)."""

import os

import pytest

from tests.browser.conftest import CHROMIUM, PASSWORD, USERNAME
from tests.live import daphne, live_env, prepare_database

REPLY = ".message.assistant"
SEED = f"""
import json
from django.contrib.auth import get_user_model
get_user_model().objects.create_user({USERNAME!r}, password={PASSWORD!r})
print(json.dumps({{}}))
"""


@pytest.fixture(scope="module")
def loading_server(tiny_model_dir, tmp_path_factory):
    """Base URL of a daphne on the tiny model whose load waits for `gate` to exist."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (make system)")
    folder = tmp_path_factory.mktemp("loading")
    gate = folder / "load-now"
    env = live_env(
        folder / "db.sqlite3",
        model=tiny_model_dir,
        GENERATION_MAX_NEW_TOKENS="4000",
        CHATSITE_TEST_LOAD_GATE=str(gate),
        DEBUG="1",
    )
    prepare_database(env, SEED)
    with daphne(env, folder / "daphne.log", application="tests.browser.gated_asgi:application") as url:
        yield {"url": url, "gate": gate}


def test_the_page_says_the_model_is_loading_also_after_a_reload(browser, loading_server):
    """A message sent while the model loads says the model is loading, not a
    queue position; reloaded, the page re-attaches and says so again (with
    Stop); once the model is loaded, the reply streams on the reloaded page."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(loading_server["url"] + "/")
        page.fill("#id_username", USERNAME)
        page.fill("#id_password", PASSWORD)
        page.click(".login-card button[type=submit]")  # not the language switcher
        page.wait_for_function("document.body?.dataset.connected === 'true'")

        page.fill("#input", "hello while loading")
        page.press("#input", "Enter")
        page.wait_for_selector(f"{REPLY} .status >> text=The model is loading")
        assert "position" not in page.text_content(f"{REPLY} .status")

        page.reload()
        page.wait_for_selector("#stop", state="visible")  # re-attached to the waiting reply
        page.wait_for_selector(f"{REPLY} .status >> text=The model is loading")
        assert "position" not in page.text_content(f"{REPLY} .status")
        assert page.locator(REPLY).count() == 1

        loading_server["gate"].touch()
        page.wait_for_function(
            f"document.querySelector('{REPLY} .body')?.textContent.length > 0", timeout=60_000
        )
        page.click("#stop")
        page.wait_for_selector("#send", state="visible")
    finally:
        context.close()
