"""The sidebar in a real browser: whole titles, rename in place and delete
with Undo, all by keyboard."""

import re

REPLY = ".message.assistant .body"
CURRENT = "#conversations li.current"


def start_conversation(page, text: str, *, stop: bool = True) -> int:
    """Send `text` as a new chat; wait until its reply streams (and stop it
    unless `stop` is False). Returns the conversation's id."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(f"document.querySelector('{REPLY}')?.textContent.length > 0")
    if stop:
        page.click("#stop")
        page.wait_for_selector("#send", state="visible")
    page.wait_for_selector(CURRENT)
    return int(re.search(r"/c/(\d+)/$", page.url).group(1))


def test_rename_in_place_by_keyboard_and_whole_titles(page):
    """Rename turns the title into a text box (Escape keeps the old title,
    Enter saves); a long title of Japanese and emoji shows whole, wrapped,
    never cut, and stays after a reload. No browser dialog is used."""
    start_conversation(page, "rename me")
    page.focus(f"{CURRENT} .rename")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{CURRENT} .rename-input:focus")
    page.keyboard.type("thrown away")
    page.keyboard.press("Escape")
    page.wait_for_selector(f"{CURRENT} .open:focus")
    assert page.text_content(f"{CURRENT} .open") == "rename me"

    title = "長い会話の題名は途中で切れずに全部見えること 👨‍👩‍👧 family plans for the whole summer holidays 🏖️"
    page.focus(f"{CURRENT} .rename")
    page.keyboard.press("Enter")
    page.fill(f"{CURRENT} .rename-input", title)
    with page.expect_response("**/rename/"):
        page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('{CURRENT} .open')?.textContent === {title!r}")
    shape = page.eval_on_selector(
        f"{CURRENT} .open",
        """el => ({overflows: el.scrollWidth > el.clientWidth,
                  lines: Math.round(el.getBoundingClientRect().height / parseFloat(getComputedStyle(el).lineHeight)),
                  tooltip: el.title})""",
    )
    assert not shape["overflows"]
    assert shape["lines"] >= 2  # wrapped, not cut
    assert shape["tooltip"] == title
    page.reload()
    page.wait_for_selector(CURRENT)
    assert page.text_content(f"{CURRENT} .open") == title
    assert page.dialogs == []


def test_a_list_reload_during_a_rename_keeps_the_typed_title(page):
    """The list reloads when a reply ends; a title being typed at that moment
    stays in its box, with the focus, and Enter still saves it."""
    start_conversation(page, "reply ends while I rename", stop=False)
    page.focus(f"{CURRENT} .rename")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{CURRENT} .rename-input:focus")
    page.keyboard.type("kept title")
    # Stop the reply without moving the focus (a click would end the rename).
    with page.expect_response(lambda r: r.url.endswith("/api/conversations/")):
        page.eval_on_selector("#stop", "b => b.click()")
    page.wait_for_selector("#send", state="visible")
    assert page.input_value(f"{CURRENT} .rename-input:focus") == "kept title"
    with page.expect_response("**/rename/"):
        page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('{CURRENT} .open')?.textContent === 'kept title'")
    page.wait_for_selector(f"{CURRENT} .open:focus")


def test_delete_stops_the_reply_and_undo_brings_the_conversation_back(page, chat_server):
    """Delete (by keyboard, mid-reply) removes the conversation from the list
    at once and stops its reply; "Undo" takes the focus, and Enter on it brings
    the conversation back with its question. No confirm box."""
    conversation = start_conversation(page, "delete me while you write", stop=False)
    page.focus(f"{CURRENT} .delete")
    page.keyboard.press("Enter")
    assert page.locator(f"#conversations li[data-id='{conversation}']").count() == 0
    page.wait_for_selector("#undo-bar >> text=Deleted “delete me while you write”.")
    page.wait_for_selector("#undo-bar .undo:focus")
    page.wait_for_selector("#send", state="visible")  # the reply ended
    assert page.url == chat_server["url"] + "/"
    status = page.evaluate(f"fetch('/api/conversations/{conversation}/').then(r => r.status)")
    assert status == 404

    page.keyboard.press("Enter")
    page.wait_for_selector(f"#conversations li[data-id='{conversation}']")
    page.wait_for_url(f"**/c/{conversation}/")
    page.wait_for_selector(".message.user >> text=delete me while you write")
    assert page.text_content("#undo-bar") == ""
    stored = page.evaluate(f"fetch('/api/conversations/{conversation}/').then(r => r.json())")
    assert [m["status"] for m in stored["messages"] if m["role"] == "assistant"] != ["generating"]
    assert page.is_visible("#send")
    assert page.dialogs == []


def test_search_finds_a_japanese_word_and_opens_the_conversation(page, chat_server):
    """A Japanese word from the middle of a sent message finds its
    conversation; the result is a link that opens it (by keyboard), and
    Escape in the box brings the list back."""
    conversation = start_conversation(page, "来年の夏休みに北海道へ旅行する計画を立てたい")
    page.click("#new-chat")
    page.fill("#search", "北海道")
    page.wait_for_selector("#search-results .result")
    assert page.is_hidden("#conversations")
    assert page.get_attribute("#search-results .result", "href") == f"/c/{conversation}/"
    assert "北海道" in page.text_content("#search-results .result-snippet")
    assert page.text_content("#search-status") == "1 conversation found."
    page.focus("#search-results .result")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/c/{conversation}/")
    page.wait_for_selector(".message.user >> text=北海道")

    page.fill("#search", "一度も書いていない言葉")
    page.wait_for_selector("#search-status >> text=No conversations match.")
    page.focus("#search")
    page.keyboard.press("Escape")
    page.wait_for_selector("#conversations", state="visible")
    assert page.input_value("#search") == ""
    assert page.is_hidden("#search-results")
