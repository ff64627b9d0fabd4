"""A small client for the chat's login and /ws/chat/ protocol.

`bench_chat` measures the whole stack with it, and the end-to-end tests
drive the stack with it, the way a browser would: a session cookie from the
login form, the page's origin on the socket, JSON text frames.
"""

import asyncio
import http.cookiejar
import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import websockets

TERMINAL = frozenset({"done", "error"})


class LoginFailed(Exception):
    """The login form did not accept the username and password."""


def csrf_token(page: str) -> str:
    """The CSRF token a Django form page carries, to post the form back."""
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def login(base_url: str, username: str, password: str) -> str:
    """Log in through the form (with its CSRF token); return the Cookie header.

    Blocking: call it through asyncio.to_thread from async code.
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login_url = f"{base_url}/accounts/login/"
    page = opener.open(login_url, timeout=30).read().decode()
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": csrf_token(page)}
    )
    request = urllib.request.Request(login_url, data=form.encode(), headers={"Referer": login_url})
    response = opener.open(request, timeout=30)
    cookies = {cookie.name: cookie.value for cookie in jar}
    if "sessionid" not in cookies or "/accounts/login/" in response.geturl():
        raise LoginFailed(f"login refused for {username}")
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


@dataclass
class Reply:
    """What one client saw of one request, with arrival times (perf_counter)."""

    sent_at: float
    events: list[dict] = field(default_factory=list)
    first_token_at: float | None = None
    ended_at: float | None = None

    @property
    def terminal(self) -> dict:
        """The done or error event that ended the reply."""
        return self.events[-1]

    @property
    def text(self) -> str:
        """The streamed text, from the token events."""
        return "".join(event["text"] for event in self.events if event["type"] == "token")


class ChatSocket:
    """One logged-in /ws/chat/ connection."""

    def __init__(self, connection, ws_url: str, cookie: str, origin: str):
        self.connection = connection
        self.ws_url, self.cookie, self.origin = ws_url, cookie, origin

    @classmethod
    async def open(cls, ws_url: str, cookie: str, origin: str) -> "ChatSocket":
        """Connect with the session cookie and the page's origin.

        The client reads every frame as it arrives (`max_queue=None`), as a
        browser does: with websockets' default of 16 unread frames it stops
        reading the socket, so a caller busy elsewhere while a reply streams
        would leave daphne's pings unanswered, and daphne drops the
        connection after its ping timeout (5 s in tests/live.py).
        """
        connection = await websockets.connect(
            ws_url,
            additional_headers={"Cookie": cookie},
            origin=origin,
            max_size=None,
            max_queue=None,
            open_timeout=30,
        )
        return cls(connection, ws_url, cookie, origin)

    async def reconnect(self) -> "ChatSocket":
        """A new connection for the same session, as the page makes after a drop."""
        return await self.open(self.ws_url, self.cookie, self.origin)

    async def send(self, content: str, conversation: int | None = None) -> None:
        """Ask for a reply to `content` (a new conversation when None)."""
        await self.send_frame({"type": "send", "conversation": conversation, "content": content})

    async def send_frame(self, frame) -> None:
        """Send a frame as it is: a dict as JSON, str or bytes raw."""
        await self.connection.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def receive(self, timeout: float = 60) -> dict:
        """The next event from the server."""
        return json.loads(await asyncio.wait_for(self.connection.recv(), timeout))

    async def reply(self, content: str, conversation: int | None = None, timeout: float = 120) -> Reply:
        """Send a message and collect its events until done or error."""
        reply = Reply(sent_at=time.perf_counter())
        await self.send(content, conversation)
        async with asyncio.timeout(timeout):
            while True:
                event = await self.receive(timeout)
                reply.events.append(event)
                if event["type"] == "token" and reply.first_token_at is None:
                    reply.first_token_at = time.perf_counter()
                if event["type"] in TERMINAL:
                    reply.ended_at = time.perf_counter()
                    return reply

    async def close(self) -> None:
        """Close the socket. Its reply, if any, keeps its place for the
        server's GENERATION_REATTACH_GRACE_S, then is cancelled (docs/protocol.md)."""
        await self.connection.close()
