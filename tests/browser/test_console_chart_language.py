"""The console's chart speaks the reader's language: its legend and its clock."""

from tests.browser.conftest import STAFF_PASSWORD, STAFF_USERNAME


def open_console(browser, chat_server, locale):
    context = browser.new_context(locale=locale, timezone_id="UTC")
    console = context.new_page()
    console.set_default_timeout(15_000)
    console.goto(chat_server["url"] + "/admin/queue/")
    console.fill("#id_username", STAFF_USERNAME)
    console.fill("#id_password", STAFF_PASSWORD)
    console.click("input[type=submit]")
    console.wait_for_selector("#chart .uplot")
    return context, console


def legend_time_label(console) -> str:
    """The legend's name for the time series (uPlot's own is "Time")."""
    return console.text_content("#chart .u-legend .u-series:first-child .u-label")


def test_the_chart_legend_is_japanese_for_a_japanese_reader(browser, chat_server):
    """A Japanese reader's chart legend names the time 時刻; an English
    reader's says Time. (The axis's clock is drawn on the canvas, out of a
    test's reach; it is formatted by the same Intl call as the legend.)"""
    context, console = open_console(browser, chat_server, "ja-JP")
    assert legend_time_label(console) == "時刻"
    context.close()
    context, console = open_console(browser, chat_server, "en-US")
    assert legend_time_label(console) == "Time"
    context.close()
