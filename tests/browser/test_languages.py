"""Japanese and English in a real browser: a Japanese browser (locale ja-JP,
so Accept-Language ja-JP) gets the login form, the chat page, its script's
words, its error words and the console in Japanese; Japanese text goes in and
comes out intact; the switcher changes the language and the choice sticks."""

import os
from pathlib import Path

import pytest

from tests.browser.conftest import (
    JAPANESE_QUESTION,
    PASSWORD,
    STAFF_PASSWORD,
    STAFF_USERNAME,
    USERNAME,
)

# Set to a folder (docs/screenshots) to write the Japanese page's screenshot there.
SCREENSHOTS = os.environ.get("CHATSITE_SCREENSHOTS", "")


@pytest.fixture
def japanese(browser, chat_server):
    """A fresh ja-JP browser context, logged in through the Japanese login form."""
    context = browser.new_context(locale="ja-JP", viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(chat_server["url"] + "/")
    assert page.get_attribute("html", "lang") == "ja"
    assert page.text_content("h1") == "ログイン"
    assert page.text_content("label[for=id_username]") == "ユーザー名"
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", "not the password")
    page.click(".login-card button[type=submit]")
    page.wait_for_selector("text=ユーザー名とパスワードが一致しません。もう一度お試しください。")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click(".login-card button[type=submit]")
    page.wait_for_selector("#input")
    page.wait_for_function("document.body?.dataset.connected === 'true'")
    yield page
    context.close()


def test_a_japanese_reader_sees_the_page_and_its_scripts_in_japanese(japanese, chat_server):
    page = japanese
    assert page.text_content("#send") == "送信"
    assert page.text_content("#new-chat") == "新しいチャット"
    placeholder = "メッセージを入力（Enter で送信、Shift+Enter で改行）"  # noqa: RUF001 - full-width on purpose
    assert page.get_attribute("#input", "placeholder") == placeholder
    # The script's words for a `queued` frame: the model loading, a position
    # with an estimate, a position alone.
    words = page.evaluate(
        """async () => {
          const { queueText } = await import('/static/js/words.js');
          return [
            {position: 2, waiting: 3, model_state: 'loading', eta_s: null},
            {position: 3, waiting: 12, model_state: 'ready', eta_s: 20},
            {position: 1, waiting: 1, model_state: 'ready', eta_s: 120},
            {position: 1, waiting: 4, model_state: 'ready', eta_s: null},
          ].map(queueText);
        }"""
    )
    assert words == [
        "モデルを読み込み中です。準備ができしだい返信を開始します。",
        "キューで待機中: 3番目 / 全12件。約20秒後に開始",
        "キューで待機中: 1番目 / 全1件。約2分後に開始",
        "キューで待機中: 1番目 / 全4件",
    ]


def test_japanese_text_round_trips_and_errors_are_in_japanese(japanese, chat_server):
    """The stored Japanese reply renders intact (Markdown, emoji, half-width
    and decomposed kana); a Japanese question is sent, stopped and reloaded
    exactly as typed, with the status in Japanese; a refused message is
    worded in Japanese and stays in the box."""
    page = japanese
    page.click(f"#conversations li[data-id='{chat_server['japanese_conversation']}'] .open")
    page.wait_for_selector(".message.assistant .body strong")
    assert page.text_content(".message.user .body") == JAPANESE_QUESTION
    reply = page.text_content(".message.assistant .body")
    for piece in (
        "東京のおすすめは次の3つです。",
        "寿司 \U0001f363",
        "か\u3099んもどき",
        "\uff76\uff9e",
        'print("こんにちは、世界")',
    ):
        assert piece in reply
    assert page.text_content(".message.assistant .copy-reply") == "コピー"
    assert page.text_content(".message.assistant .regenerate") == "再生成"
    assert page.text_content(".message.user .edit") == "編集"
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "chat-ja.png"))

    page.click("#new-chat")
    question = "日本語で説明してください：なぜ空は青いのですか？\U0001f308"  # noqa: RUF001 - full-width Japanese punctuation on purpose
    page.fill("#input", question)
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant .status:text-matches('作成中…|待機中…|キューで待機中')")
    assert page.text_content("#stop") == "停止"
    page.click("#stop")
    page.wait_for_selector(".message.assistant .status >> text=停止しました。")
    page.reload()
    page.wait_for_selector(".message.assistant .status >> text=停止しました。")
    assert page.text_content(".message.user .body") == question

    # A NUL is refused by the server (an `invalid` error frame): its
    # specific reason in Japanese, and the text stays in the box.
    page.fill("#input", "ヌル文字\u0000入り")
    page.press("#input", "Enter")
    page.wait_for_selector("#notice >> text=メッセージにヌル文字（U+0000）を含めることはできません。")  # noqa: RUF001 - the Japanese sentence's full-width parentheses
    assert page.input_value("#input") == "ヌル文字\u0000入り"


def test_the_switcher_changes_the_language_and_it_sticks(japanese):
    """English chosen on a Japanese browser: the page is in English, after a
    reload too (the language cookie beats Accept-Language), until 日本語 is
    chosen again."""
    page = japanese
    page.click(".language button[value=en]")
    page.wait_for_selector("#send >> text=Send")
    assert page.get_attribute("html", "lang") == "en"
    page.reload()
    page.wait_for_selector("#send >> text=Send")
    assert page.text_content(".language button[aria-current]") == "English"
    page.click(".language button[value=ja]")
    page.wait_for_selector("#send >> text=送信")


def open_console(browser, chat_server, locale: str):
    """A new context with this browser `locale` (clock in UTC), logged in as
    staff on the queue console; (context, page)."""
    context = browser.new_context(locale=locale, timezone_id="UTC")
    console = context.new_page()
    console.set_default_timeout(15_000)
    console.goto(chat_server["url"] + "/admin/queue/")
    console.fill("#id_username", STAFF_USERNAME)
    console.fill("#id_password", STAFF_PASSWORD)
    console.click("input[type=submit]")
    return context, console


def test_the_console_is_in_japanese(browser, chat_server):
    """Staff with a Japanese browser get the queue console's page and live
    words in Japanese."""
    context, console = open_console(browser, chat_server, "ja-JP")
    console.wait_for_selector("#console[data-connected='true']")
    assert console.get_attribute("html", "lang") == "ja"
    assert console.text_content("#console h2") == "サーバープロセス"
    console.wait_for_selector("#connection:text-is('リアルタイム更新中')")
    console.wait_for_selector("#workers tbody tr[data-worker] td.model:text-is('準備完了')", timeout=60_000)
    assert console.get_attribute("#save-settings", "value") == "保存して適用"
    context.close()


def legend_time_label(console) -> str:
    """The console chart legend's name for the time series (uPlot's own is "Time")."""
    console.wait_for_selector("#chart .uplot")
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
