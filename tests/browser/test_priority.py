"""Priority classes as a waiting person sees them (issue #15), against a
live daphne on the tiny model with room for one reply at a time."""

import os

import pytest

from tests.browser.conftest import CHROMIUM
from tests.live import daphne, live_env, manage, prepare_database, seed_logged_in_users

RUNNER, WAITER, BOSS = "runner", "waiter", "boss"
STATUS = ".message.assistant .status"
BODY = ".message.assistant .body"


@pytest.fixture(scope="module")
def priority_server(tiny_model_dir, tmp_path_factory):
    """Base URL and {name: session key} of a daphne on the tiny model with a
    cap of one reply, where a class made by `manage.py priority_class` puts
    staff (BOSS) before everyone else (RUNNER, WAITER)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (make system)")
    folder = tmp_path_factory.mktemp("priority")
    env = live_env(
        folder / "db.sqlite3",
        model=tiny_model_dir,
        GENERATION_MAX_CONCURRENCY="1",
        # Long enough that the first reply is still being written while the
        # test looks at the queue (the tiny model never ends on its own here).
        GENERATION_MAX_NEW_TOKENS="4000",
        REDIS_URL="",  # this process's own queue
        DEBUG="1",
    )
    sessions = prepare_database(env, seed_logged_in_users([RUNNER, WAITER], staff=[BOSS]))
    made = manage(env, "priority_class", "set", "staff-first", "--rank", "0", "--staff")
    assert made.returncode == 0, made.stderr
    with daphne(env, folder / "daphne.log") as url:
        yield {"url": url, "sessions": sessions}


def chat_page(browser, server, name):
    """The chat page of `name`, logged in by session cookie and connected."""
    context = browser.new_context()
    context.add_cookies([{"name": "sessionid", "value": server["sessions"][name], "url": server["url"]}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(server["url"] + "/")
    page.wait_for_function("document.body?.dataset.connected === 'true'")
    return page


def send(page, text):
    """Send `text` as the next question and wait until it is accepted."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_selector("#stop", state="visible")


def wait_status(page, words, timeout=15_000):
    """Wait until the reply's status line contains `words`."""
    page.wait_for_function(
        "([selector, words]) => document.querySelector(selector)?.textContent.includes(words)",
        arg=[STATUS, words],
        timeout=timeout,
    )


def wait_writing(page, timeout=15_000):
    """Wait until the reply's text has begun."""
    page.wait_for_function(f"document.querySelector({BODY!r})?.textContent.length > 0", timeout=timeout)


def test_a_waiting_person_is_moved_back_by_a_priority_request(browser, priority_server):
    """With one reply running and a person waiting first in line, a staff
    member of a better class sends: the waiting person's page says
    "Moved back: priority requests arrived." at position 2 of 2, and when
    the running reply stops, the staff member's reply starts, not theirs."""
    pages = {name: chat_page(browser, priority_server, name) for name in (RUNNER, WAITER, BOSS)}
    runner, waiter, boss = pages[RUNNER], pages[WAITER], pages[BOSS]
    try:
        send(runner, "tell me a long story")
        wait_writing(runner, timeout=60_000)  # the model loads with the first request

        send(waiter, "and then me")
        wait_status(waiter, "Waiting in queue: position 1 of 1")
        assert "Moved back" not in waiter.text_content(STATUS)

        send(boss, "staff first, please")
        wait_status(waiter, "Moved back: priority requests arrived. Waiting in queue: position 2 of 2")
        wait_status(boss, "Waiting in queue: position 1 of 2")
        assert runner.text_content(BODY)  # still the first reply that runs

        runner.click("#stop")
        runner.wait_for_selector("#send", state="visible")
        wait_writing(boss)
        wait_status(waiter, "Waiting in queue: position 1 of 1")
        assert "Moved back" not in waiter.text_content(STATUS)  # the place got better
        assert waiter.text_content(BODY) == ""

        boss.click("#stop")
        wait_writing(waiter)
        waiter.click("#stop")
        waiter.wait_for_selector("#send", state="visible")
    finally:
        for page in pages.values():
            page.context.close()
