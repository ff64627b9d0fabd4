"""Phone-width screenshots of the chat page for docs/screenshots/ and the README.

Not part of the suite (the name does not match test_*.py); run it on
purpose, under the live lock:

    flock /tmp/chatsite-live.lock .venv/bin/python -m pytest tests/browser/screenshots_phone.py -q
"""

from pathlib import Path

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}


def test_phone_width_screenshots(page, chat_server):
    """The Markdown conversation at 390x844 in light mode; the page has no
    horizontal scroll. (Not the sidebar: the seeded titles are attack strings.)"""
    page.set_viewport_size(PHONE)
    page.emulate_media(color_scheme="light")
    page.goto(f"{chat_server['url']}/c/{chat_server['markdown_conversation']}/")
    page.wait_for_selector(".message.assistant .body table")
    page.wait_for_function("document.body?.dataset.connected === 'true'")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=SHOTS / "chat-phone-light.png")
