"""The chat page in a real browser against a live daphne server."""

import re

from tests.browser.conftest import XSS

REPLY = ".message.assistant .body"


def reply_length(page) -> int:
    return page.eval_on_selector(f"{REPLY} >> nth=-1", "el => el.textContent.length")


def test_send_stream_stop_and_reload(page, chat_server):
    """A reply streams in, rendered as Markdown, into a polite live region
    that is busy until it ends; Stop stops it, and a reload shows what was
    saved, rendered the same."""
    page.fill("#input", "first line")
    page.press("#input", "Shift+Enter")
    page.type("#input", "hello")
    assert page.input_value("#input") == "first line\nhello"  # Shift+Enter did not send
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    assert page.input_value("#input") == ""
    page.wait_for_selector(".message.user >> text=hello")

    # The text grows in at least two steps while the reply is being written.
    page.wait_for_function(f"document.querySelector('{REPLY}')?.textContent.length > 0")
    first = reply_length(page)
    page.wait_for_function(f"document.querySelector('{REPLY}').textContent.length > {first}")
    assert page.is_visible("#stop")
    assert page.get_attribute(REPLY, "aria-live") == "polite"
    assert page.get_attribute(REPLY, "aria-busy") == "true"
    # Markdown, not a bare text node: the text sits in block elements.
    assert page.eval_on_selector(
        REPLY, "el => el.children.length > 0 && [...el.childNodes].every((n) => n.nodeType === 1)"
    )

    page.click("#stop")
    page.wait_for_selector(".message.assistant .status >> text=Stopped.")
    assert page.is_visible("#send")
    assert page.get_attribute(REPLY, "aria-busy") == "false"
    stopped_text, stopped_html = page.text_content(REPLY), page.inner_html(REPLY)
    page.wait_for_timeout(300)
    assert page.text_content(REPLY) == stopped_text  # no longer growing
    assert re.search(r"/c/\d+/$", page.url)
    assert page.text_content("#conversations li.current .open") == "hello"

    page.reload()
    page.wait_for_selector(REPLY)
    assert page.text_content(".message.user .body") == "hello"
    assert page.text_content(REPLY) == stopped_text
    assert page.inner_html(REPLY) == stopped_html  # stored replies render as streamed ones
    status = page.text_content(".message.assistant .status")
    assert "Stopped." in status
    assert "First token in" in status
    assert "tokens/s" in status


def test_enter_during_ime_composition_does_not_send(page):
    """Enter that confirms an IME composition stays in the box; nothing is sent."""
    page.fill("#input", "にほんご")
    page.dispatch_event("#input", "keydown", {"key": "Enter", "isComposing": True})
    page.dispatch_event("#input", "keydown", {"key": "Enter", "keyCode": 229})
    page.wait_for_timeout(200)
    assert page.input_value("#input") == "にほんご"
    assert page.locator(".message").count() == 0


def test_markup_in_messages_shows_as_text(page, chat_server):
    """Stored replies and sent messages containing HTML show literally; nothing runs."""
    page.goto(f"{chat_server['url']}/c/{chat_server['xss_conversation']}/")
    page.wait_for_selector(REPLY)
    assert page.text_content(REPLY) == XSS
    assert page.text_content(f"#conversations li[data-id='{chat_server['xss_conversation']}'] .open") == XSS
    assert page.locator(".messages img, #conversations img").count() == 0

    page.fill("#input", XSS)
    page.press("#input", "Enter")
    page.wait_for_selector(f".message.user >> nth=-1 >> text={XSS}")
    page.wait_for_selector("#stop", state="visible")
    page.click("#stop")
    page.wait_for_selector("#send", state="visible")
    assert page.text_content(".message.user >> nth=-1 >> .body") == XSS
    assert page.locator(".messages img").count() == 0
    page.wait_for_timeout(200)
    assert page.dialogs == []


def test_phone_width_has_no_horizontal_scroll(page):
    """At phone width the composer fits and the sidebar folds behind a toggle."""
    page.set_viewport_size({"width": 375, "height": 740})
    assert page.is_visible("#input")
    assert page.is_visible("#sidebar-toggle")
    assert not page.is_visible("#sidebar")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.click("#sidebar-toggle")
    assert page.is_visible("#new-chat")


def test_the_page_counts_characters_as_the_server_does(page):
    """An emoji is one character on the page as on the server: 8,000 of them
    are sent whole; one more stays in the box, whole, with a message and a
    counter past the limit."""
    emoji = "\U0001f600"
    page.fill("#input", emoji * 8001)
    page.press("#input", "Enter")
    page.wait_for_selector("#notice >> text=longer than 8000 characters")
    assert page.input_value("#input") == emoji * 8001
    assert page.text_content("#count") == "8001 / 8000"
    page.fill("#input", emoji * 8000)
    assert page.is_hidden("#notice")  # short enough now: the warning goes
    page.press("#input", "Enter")
    page.wait_for_selector(".message.user")
    assert page.input_value("#input") == ""
    assert page.text_content(".message.user .body") == emoji * 8000


def test_the_page_judges_blank_text_as_the_server_does(page):
    """A message of U+FEFF is text to the server (Python's isspace), so the
    page sends it rather than silently ignoring Enter; a message of U+001C is
    blank to the server, so the page does not send it."""
    page.fill("#input", "\x1c")
    page.press("#input", "Enter")
    page.wait_for_timeout(300)
    assert page.locator(".message.user").count() == 0
    page.fill("#input", "\ufeff")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.user")
    assert page.input_value("#input") == ""


def stop_reply(page):
    page.click("#stop")
    page.wait_for_selector("#send", state="visible")


def test_reload_mid_reply_reattaches(page):
    """Reloading while a reply is written shows its text so far, and the rest
    keeps streaming into the same reply, which Stop still stops."""
    page.fill("#input", "keep writing")
    page.press("#input", "Enter")
    page.wait_for_function(f"document.querySelector('{REPLY}')?.textContent.length > 0")
    before = page.text_content(REPLY)

    page.reload()
    page.wait_for_selector("#stop", state="visible")  # attached: the page knows a reply is live
    page.wait_for_function(f"document.querySelector('{REPLY}')?.textContent.length > {len(before)}")
    assert page.text_content(REPLY).startswith(before)
    assert page.locator(".message.assistant").count() == 1
    assert page.get_attribute(REPLY, "aria-busy") == "true"
    stop_reply(page)
    page.wait_for_selector(".message.assistant .status >> text=Stopped.")


def test_regenerate_and_edit_replace_the_last_turn(page, chat_server):
    """Regenerate shows a new reply in place of the old one and stores it; Edit
    puts the question back in the box, and sending it replaces the question
    and its reply. Superseded messages leave the page and the history."""
    page.fill("#input", "first try")
    page.press("#input", "Enter")
    page.wait_for_function(f"document.querySelector('{REPLY}')?.textContent.length > 0")
    stop_reply(page)
    old_reply = page.get_attribute(".message.assistant", "data-id")

    page.click("button.regenerate")
    page.wait_for_function(
        f"(r => r && r.dataset.id && r.dataset.id !== '{old_reply}')(document.querySelector('.message.assistant'))"
    )
    page.wait_for_function(f"document.querySelector('{REPLY}')?.textContent.length > 0")
    stop_reply(page)
    new_reply = page.get_attribute(".message.assistant", "data-id")
    assert page.locator(".message").count() == 2
    conversation = int(re.search(r"/c/(\d+)/$", page.url).group(1))
    history = page.evaluate(f"fetch('/api/conversations/{conversation}/').then(r => r.json())")
    assert [(m["role"], str(m["id"])) for m in history["messages"]][1] == ("assistant", new_reply)
    assert len(history["messages"]) == 2

    page.fill("#input", "draft kept")
    page.click("button.edit")
    assert page.input_value("#input") == "first try"
    page.fill("#input", "second try")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.user >> text=second try")
    assert page.input_value("#input") == "draft kept"  # the draft comes back
    page.wait_for_function(f"document.querySelector('{REPLY}')?.textContent.length > 0")
    stop_reply(page)
    assert page.locator(".message.user").count() == 1
    assert page.locator(".message.assistant").count() == 1
    history = page.evaluate(f"fetch('/api/conversations/{conversation}/').then(r => r.json())")
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["second try"]


def test_temperature_is_set_per_conversation(page, chat_server):
    """The temperature chosen for a conversation is stored and shown again
    after a reload; a new chat shows no control until it has a conversation."""
    assert page.is_hidden("#temperature")
    page.goto(f"{chat_server['url']}/c/{chat_server['markdown_conversation']}/")
    page.wait_for_selector("#temperature", state="visible")
    assert page.input_value("#temperature") == ""
    with page.expect_response("**/sampling/"):
        page.select_option("#temperature", "0.7")
    page.reload()
    page.wait_for_function("document.getElementById('temperature').value === '0.7'")
    with page.expect_response("**/sampling/"):
        page.select_option("#temperature", "")


def test_queue_wording_follows_model_state_and_eta(page):
    """The page words a `queued` frame as a person expects: the model loading
    (no position), a position with "Starts in about …" (minutes from 60 s),
    or the position alone while there is no estimate."""
    words = page.evaluate(
        """async () => {
          const { queueText } = await import('/static/js/words.js');
          return [
            {position: 2, waiting: 3, model_state: 'loading', eta_s: null},
            {position: 2, waiting: 3, model_state: 'ready', eta_s: 20},
            {position: 1, waiting: 1, model_state: 'ready', eta_s: 120},
            {position: 1, waiting: 4, model_state: 'ready', eta_s: null},
          ].map(queueText);
        }"""
    )
    assert "loading" in words[0] and "position" not in words[0]
    assert words[1] == "Waiting in queue: position 2 of 3. Starts in about 20 s"
    assert words[2].endswith("Starts in about 2 min")
    assert words[3] == "Waiting in queue: position 1 of 4"


def test_a_waiting_person_is_told_they_moved_back(page):
    """A `queued` frame with moved_back (a priority request went ahead) is
    worded "Moved back: priority requests arrived." before the new place."""
    text = page.evaluate(
        """async () => {
          const { queueText } = await import('/static/js/words.js');
          return queueText({position: 3, waiting: 3, model_state: 'ready', eta_s: null}, {movedBack: true});
        }"""
    )
    assert text == "Moved back: priority requests arrived. Waiting in queue: position 3 of 3"
