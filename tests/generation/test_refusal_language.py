"""Refused chat frames say their specific reason in the reader's language."""

import contextlib

import pytest
from channels.testing import WebsocketCommunicator

from generation import consumers
from generation.language import language_of
from tests.generation.conftest import TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.asynccontextmanager
async def chat_socket(user, headers):
    """A chat socket as `user` (as the auth middleware sets it) with these HTTP headers."""
    application = consumers.ChatConsumer.as_asgi()

    async def with_user(scope, receive, send):
        return await application({**scope, "user": user}, receive, send)

    communicator = WebsocketCommunicator(with_user, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    try:
        yield communicator
    finally:
        await communicator.disconnect(timeout=10)


async def test_a_too_long_message_is_refused_in_japanese(service, alice, settings):
    """With Japanese chosen (the language cookie), a message over the limit is
    refused with the length sentence in Japanese, marked lang "ja", not
    with the general words of `invalid`."""
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    async with chat_socket(alice, [(b"cookie", b"django_language=ja")]) as chat:
        await chat.send_json_to({"type": "send", "conversation": None, "content": "x" * 11})
        refused = await chat.receive_json_from(TIMEOUT)
    assert (refused["code"], refused["lang"]) == ("invalid", "ja")
    assert "10" in refused["message"] and "文字" in refused["message"], refused["message"]


async def test_a_malformed_frame_is_refused_in_the_browsers_language(service, alice):
    """Without the cookie, Accept-Language decides, as for the page."""
    async with chat_socket(alice, [(b"accept-language", b"ja,en;q=0.5")]) as chat:
        await chat.send_to("{not json")
        refused = await chat.receive_json_from(TIMEOUT)
    assert refused["lang"] == "ja"
    assert refused["message"] != "The frame is not valid JSON." and refused["message"], refused


def test_language_of_prefers_the_cookie_and_falls_back_to_english():
    """The cookie wins over Accept-Language; neither gives LANGUAGE_CODE; an
    unsupported language is not picked."""
    assert language_of({"headers": [(b"cookie", b"django_language=ja"), (b"accept-language", b"en")]}) == "ja"
    assert language_of({"headers": []}) == "en"
    assert language_of({"headers": [(b"accept-language", b"fr")]}) == "en"
