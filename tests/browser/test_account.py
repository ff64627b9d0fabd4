"""Changing one's password from the chat page, in a real browser."""

from tests.browser.conftest import CHANGER_PASSWORD, CHANGER_USERNAME

NEW_PASSWORD = "a-brand-new-secret-456"


def test_password_change_from_the_chat_page_keeps_this_browser_chatting(browser, chat_server):
    """The chat page links to the password form; after the change, the chat
    open in another tab of the same browser (whose socket the watch closes,
    its session key being replaced) reloads by itself and is still logged in
    and connected, and the form's tab goes back to a working chat."""
    context = browser.new_context()
    try:
        chat = context.new_page()
        chat.set_default_timeout(15_000)
        chat.goto(chat_server["url"] + "/")
        chat.fill("#id_username", CHANGER_USERNAME)
        chat.fill("#id_password", CHANGER_PASSWORD)
        chat.click(".login-card button[type=submit]")  # not the language switcher
        chat.wait_for_function("document.body?.dataset.connected === 'true'")
        chat.evaluate("window.notReloaded = true")

        form = context.new_page()
        form.set_default_timeout(15_000)
        form.goto(chat_server["url"] + "/")
        form.click("text=Change password")
        form.fill("#id_old_password", CHANGER_PASSWORD)
        form.fill("#id_new_password1", NEW_PASSWORD)
        form.fill("#id_new_password2", NEW_PASSWORD)
        form.click(".login-card button[type=submit]")  # not the top bar's Log out
        form.wait_for_selector("h1 >> text=Password changed")

        chat.wait_for_function("window.notReloaded === undefined")  # the 4401 reloaded it
        chat.wait_for_function("document.body?.dataset.connected === 'true'")
        assert chat.is_visible("#input")
        form.click("text=Back to the chat")
        form.wait_for_function("document.body?.dataset.connected === 'true'")
        form.fill("#input", "still logged in")
        form.press("#input", "Enter")
        form.wait_for_selector(".message.assistant .body:not(:empty)")
        # Stop it, unless the tiny model already ended it (Stop is gone then).
        form.evaluate("document.getElementById('stop')?.click()")
        form.wait_for_selector("#send", state="visible")
    finally:
        context.close()
