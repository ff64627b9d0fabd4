"""Logging out over HTTP closes the open chat socket, on a live daphne server.

The logout is an HTTP POST to /accounts/logout/, as the page's form sends
it; the socket is a real WebSocket with the session cookie. Behind nginx the
two may reach different processes, and the socket learns of the logout from
the database (generation.watch), so one process shows the same path.
Run under the live-test lock (tests/live.py starts daphne).
"""

import asyncio
import time
import urllib.parse
import urllib.request

import pytest
import websockets

from generation.wsclient import ChatSocket, login
from tests.live import daphne, live_env, prepare_database

SEED = """
import json
from django.contrib.auth import get_user_model
get_user_model().objects.create_user("dana", password="pw-dana-123")
print(json.dumps({}))
"""


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    """Base URL of one daphne process on the tiny model, with the user dana."""
    env = live_env(tmp_path / "db.sqlite3", model=tiny_model_dir, GENERATION_MAX_NEW_TOKENS="4", DEBUG="1")
    prepare_database(env, SEED)
    with daphne(env, tmp_path / "daphne.log") as url:
        yield url


def log_out(base_url: str, cookie: str) -> int:
    """POST the logout form with the session and CSRF cookies; the status after redirects."""
    cookies = dict(part.split("=", 1) for part in cookie.split("; "))
    request = urllib.request.Request(
        f"{base_url}/accounts/logout/",
        data=b"",
        headers={"Cookie": cookie, "X-CSRFToken": cookies["csrftoken"]},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


async def test_logout_over_http_closes_the_open_socket_with_4401(server):
    """A person logs out in one tab: the chat socket open in another tab is
    closed with 4401 within a second (the page then shows the login form)."""
    cookie = await asyncio.to_thread(login, server, "dana", "pw-dana-123")
    ws_url = server.replace("http://", "ws://") + "/ws/chat/"
    chat = await ChatSocket.open(ws_url, cookie, origin=server)
    assert (await chat.reply("hello")).terminal["type"] == "done"  # the socket works

    assert await asyncio.to_thread(log_out, server, cookie) == 200
    began = time.monotonic()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(chat.connection.recv(), 1.0)
    assert closed.value.rcvd.code == 4401
    assert time.monotonic() - began < 1.0
