"""Replies render as Markdown, safely; in a real browser against a live server.

The corpora (tests/browser/corpus.py) are stored as replies by the server's
seed: a stored reply renders through the same code as a streamed one
(messages.js, setBody), and a streamed reply is checked in test_chat.py.
"""

from tests.browser.conftest import USERNAME
from tests.browser.corpus import CODE, HTML_IN_CODE, MARKDOWN, XSS

REPLY = ".message.assistant .body"

# Every element on the page with an on* attribute, and every URL attribute
# whose scheme (as a browser reads it: tabs, newlines and leading controls
# dropped, case ignored) is javascript:, vbscript: or data:.
DANGEROUS_DOM = """() => {
  const found = [];
  for (const el of document.querySelectorAll("*")) {
    for (const attr of el.attributes) {
      const value = attr.value.replace(/[\\u0000-\\u0020]/g, "").toLowerCase();
      if (attr.name.startsWith("on")) found.push(`${el.tagName} ${attr.name}`);
      if (["href", "src", "action", "formaction", "xlink:href", "data"].includes(attr.name)
          && /^(javascript|vbscript|data):/.test(value)) found.push(`${el.tagName} ${attr.name}=${attr.value}`);
    }
  }
  return found;
}"""

UNLABELLED = """() => [...document.querySelectorAll("button, input:not([type=hidden]), textarea, select, a[href]")]
  .filter((el) => !(el.getAttribute("aria-label") || el.textContent.trim() || el.labels?.length))
  .map((el) => el.outerHTML)"""


def open_conversation(page, url, conversation):
    page.goto(f"{url}/c/{conversation}/")
    page.wait_for_selector(REPLY)


def style(page, selector, prop):
    return page.eval_on_selector(selector, f"el => getComputedStyle(el).{prop}")


def test_a_stored_reply_renders_as_markdown(page, chat_server):
    """Headings, emphasis, lists, a table with its alignment, links that open
    in a new tab without an opener, and a highlighted code block with a Copy
    button; a Copy button copies the whole reply's Markdown; the question
    stays text. Every control has a label and keyboard focus shows. Dark mode
    follows the system, highlight.js's theme with it."""
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=chat_server["url"])
    open_conversation(page, chat_server["url"], chat_server["markdown_conversation"])
    body = page.locator(REPLY)
    assert body.locator("h1").text_content() == "A heading"
    assert body.locator("p strong").text_content() == "bold"
    assert body.locator("p em").text_content() == "emphasis"
    assert body.locator("p > code").text_content() == "inline code"
    assert body.locator(":scope > ul > li").count() == 2
    assert body.locator("ul ul > li").text_content() == "nested"
    assert body.locator("ol > li").all_text_contents() == ["first", "second"]
    assert body.locator("th").all_text_contents() == ["name", "value"]
    assert body.locator("td.align-right").all_text_contents() == ["1", "2"]
    links = body.locator("a")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
        "https://example.com/docs",
        "https://example.org/auto",  # a bare URL becomes a link too
    ]
    for i in range(links.count()):
        assert links.nth(i).get_attribute("target") == "_blank"
        assert links.nth(i).get_attribute("rel") == "noopener noreferrer"
    code = body.locator(".code-block pre code.hljs.language-python")
    assert body.locator(".code-bar").text_content() == "pythonCopy"  # the language, and Copy
    assert code.text_content() == CODE + "\n"
    assert code.locator(".hljs-keyword").first.text_content() == "def"
    assert page.text_content(".message.user .body") == "show me Markdown"

    body.locator(".code-block button.copy-code").click()
    assert page.evaluate("navigator.clipboard.readText()") == CODE + "\n"
    page.click(".message.assistant button.copy-reply")
    page.wait_for_selector(".message.assistant button.copy-reply >> text=Copied")
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN

    assert page.evaluate(UNLABELLED) == []
    page.focus("#input")
    page.keyboard.press("Tab")  # to Send, by keyboard
    assert page.evaluate("document.activeElement.id") == "send"
    assert style(page, "#send", "outlineStyle") == "solid"

    light_page, light_keyword = style(page, "body", "backgroundColor"), style(page, ".hljs-keyword", "color")
    page.emulate_media(color_scheme="dark")
    assert style(page, "body", "backgroundColor") == "rgb(18, 20, 23)"
    assert light_page == "rgb(247, 248, 250)"
    assert style(page, ".hljs-keyword", "color") != light_keyword


def test_a_streamed_reply_renders_once_per_frame(page):
    """However many tokens arrive within one frame, the reply is rendered
    once, in the next animation frame, with all of them."""
    renders = page.evaluate("""async () => {
      const m = await import("/static/js/messages.js");
      const view = m.messageView("assistant");
      document.getElementById("messages").append(view.el);
      let renders = 0;
      new MutationObserver((records) => { renders += records.length; }).observe(view.body, { childList: true });
      for (let i = 0; i < 200; i++) m.setBodySoon(view, view.source + "word ");
      const before = view.body.textContent;
      await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
      return { before, renders, after: view.body.textContent };
    }""")
    assert renders == {"before": "", "renders": 1, "after": "word " * 199 + "word"}


def test_attacks_in_replies_and_messages_never_run(page, chat_server):
    """Script tags, event handlers, SVG with script, javascript: and data:
    links however spelled, in a stored reply, a stored question, a title and
    a question typed now: nothing runs, no on* attribute and no
    javascript:/data: URL reaches the DOM, raw HTML shows as text, and HTML
    inside a code block shows literally, entities and all."""
    page.add_init_script("window.__xss = 0")
    open_conversation(page, chat_server["url"], chat_server["attack_conversation"])
    assert page.text_content(".message.user .body") == XSS  # the question: plain text
    reply = page.locator(REPLY)
    assert "<script>window.__xss++</script>" in reply.text_content()  # raw HTML is text
    assert reply.locator("pre code").text_content() == HTML_IN_CODE + "\n"
    # Only the one safe link of the corpus is a link.
    assert reply.locator("a").evaluate_all("links => links.map((a) => a.href)") == ["https://example.com/ok"]
    assert page.locator(".messages :is(script, img, svg, iframe, object, embed, style)").count() == 0

    page.fill("#input", XSS)
    page.press("#input", "Enter")
    page.wait_for_selector(".message.user >> nth=1")
    page.wait_for_selector("#stop", state="visible")
    page.click("#stop")
    page.wait_for_selector("#send", state="visible")
    assert page.text_content(".message.user >> nth=1 >> .body") == XSS
    page.wait_for_timeout(200)
    assert page.evaluate(DANGEROUS_DOM) == []
    assert page.evaluate("window.__xss") == 0
    assert page.dialogs == []
    assert page.text_content(".who") == USERNAME  # still the same, working page
