"""The admin queue console in a real browser against a live daphne server."""

import re

import pytest

from tests.browser.conftest import STAFF_PASSWORD, STAFF_USERNAME, USERNAME

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
    console.wait_for_selector("#running tbody tr.empty")
