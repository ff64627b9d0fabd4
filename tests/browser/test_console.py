"""The admin queue console in a real browser against a live daphne server."""

import re

import pytest

from tests.browser.conftest import SEED, STAFF_PASSWORD, STAFF_USERNAME, USERNAME
from tests.live import daphne, live_env, prepare_database, redis_server

RUNNING_ROW = f"#running tbody tr[data-request]:has(td.user:text-is('{USERNAME}'))"


@pytest.fixture
def console(browser, chat_server):
    """The console page, logged in through the admin login as a staff member."""
    context = browser.new_context()
    console = context.new_page()
    console.set_default_timeout(15_000)
    console.goto(chat_server["url"] + "/admin/queue/")
    console.fill("#id_username", STAFF_USERNAME)  # the admin login comes first
    console.fill("#id_password", STAFF_PASSWORD)
    console.click("input[type=submit]")
    console.wait_for_selector("#console[data-connected='true']")
    yield console
    context.close()


def test_staff_watch_a_reply_change_the_cap_and_cancel(console, page):
    """A reply shows up live with its growing token count; a new cap is applied
    and audited; Cancel stops the reply in the user's tab."""
    console.wait_for_selector("#workers tbody tr[data-worker] td.model:text-is('ready')", timeout=60_000)
    console.wait_for_selector("#chart .uplot")  # the vendored uPlot drew the last hour

    page.fill("#input", "hello")  # `page` is a user's chat tab
    page.press("#input", "Enter")
    console.wait_for_selector(RUNNING_ROW)
    tokens = f"{RUNNING_ROW} td.tokens"
    first = int(console.text_content(tokens))
    for _ in range(50):  # the row is redrawn each push, so poll rather than hold a handle
        if int(console.text_content(tokens)) > first:
            break
        console.wait_for_timeout(100)
    else:
        raise AssertionError("the token count did not grow")
    assert console.text_content("#total .running").startswith("1 / ")
    assert console.text_content(f"{RUNNING_ROW} td.source") == "Chat"
    assert console.text_content("#by-source") == "Chat: 1 running, 0 waiting. API: 0 running, 0 waiting"

    old = console.input_value("#id_max_concurrency")
    new = "3" if old != "3" else "2"
    console.fill("#id_max_concurrency", new)
    console.click("#save-settings")
    console.wait_for_selector(f"#changes td.summary:text-is('max_concurrency {old} → {new}')")
    console.wait_for_selector(f"#total .running:text-is('1 / {new}')")
    console.wait_for_selector(f"#workers tbody tr[data-worker] td.running:text-is('1 / {new}')")
    # The save names its version, and the table shows the version the process runs.
    message = console.text_content("ul.messagelist li.success")
    version = re.search(r"saved as version (\d+); each process below shows the version it runs", message)[1]
    console.wait_for_selector(
        f"#workers tbody tr[data-worker] td.settings-version:text-is('version {version}')"
    )
    console.wait_for_selector(f"#total .settings-version:text-is('saved: version {version}')")

    console.click(f"{RUNNING_ROW} button.cancel")
    page.wait_for_selector(".message.assistant .status >> text=Stopped.")
    # The person is told, in words, that staff stopped it, and may retry.
    page.wait_for_selector(".message.assistant .failure >> text=staff stopped this reply")
    assert page.is_visible(".message.assistant .failure button.retry")
    console.wait_for_selector("#running tbody tr.empty")


@pytest.fixture
def site_console(browser, tiny_model_dir, tmp_path):
    """A console on a daphne process that admits through a site queue on a
    Redis of this test's own (which the test may stop), with a cap of 4
    and an own bound of 2; yields (page, redis server)."""
    with redis_server(tmp_path) as redis:
        env = live_env(
            tmp_path / "db.sqlite3",
            model=tiny_model_dir,
            REDIS_URL=f"redis://127.0.0.1:{redis.port}/0",
            GENERATION_TORCH_THREADS="1",
            GENERATION_MAX_CONCURRENCY="4",
            GENERATION_PROCESS_MAX_CONCURRENCY="2",
            GENERATION_WORKER_NAME="solo",
            DEBUG="1",
        )
        prepare_database(env, SEED)
        with daphne(env, tmp_path / "daphne.log") as url:
            context = browser.new_context()
            console = context.new_page()
            console.set_default_timeout(15_000)
            console.goto(url + "/admin/queue/")
            console.fill("#id_username", STAFF_USERNAME)
            console.fill("#id_password", STAFF_PASSWORD)
            console.click("input[type=submit]")
            console.wait_for_selector("#console[data-connected='true']")
            yield console, redis
            context.close()


def test_the_console_warns_while_redis_is_down(site_console):
    """Site-wide limits and both bounds are shown; with Redis stopped the
    console warns that limits apply per process and says why; with Redis
    back the warning goes by itself."""
    console, redis = site_console
    row = "#workers tbody tr[data-worker='solo']"
    console.wait_for_selector(f"{row} td.model:text-is('ready')", timeout=60_000)
    assert "whole site" in console.text_content("#admission-scope")
    assert console.text_content(f"{row} td.limits") == "site-wide"
    assert console.text_content(f"{row} td.running") == "0 / 2"  # its own bound, under the cap of 4
    assert console.text_content(f"{row} td.own-bound") == "2"
    assert console.text_content("#total .limits") == "site-wide, cap 4"
    assert console.is_hidden("#admission-warning")

    redis.stop()
    console.wait_for_selector("#admission-warning", state="visible")
    warning = console.text_content("#admission-warning")
    assert "Redis cannot be reached: limits apply per process until it is back." in warning
    assert "solo: The site queue (Redis) cannot be reached" in warning
    console.wait_for_selector(f"{row} td.limits.fallback:text-is('this process (Redis unreachable)')")
    assert console.text_content("#total .limits") == "per process"

    redis.start()
    console.wait_for_selector("#admission-warning", state="hidden", timeout=30_000)
    console.wait_for_selector(f"{row} td.limits:text-is('site-wide')")
