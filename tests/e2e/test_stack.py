"""The stack as deployed: nginx in front of two daphne processes."""

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import websockets

from generation.wsclient import ChatSocket, csrf_token, login
from tests.e2e.conftest import DAPHNE_PORTS, PASSWORD, PORT
from tests.polling import poll


async def open_socket(stack, username="user1"):
    cookie = await asyncio.to_thread(login, stack.url, username, PASSWORD)
    return await ChatSocket.open(stack.ws_url, cookie, origin=stack.url)


async def test_login_and_chat_through_nginx(stack):
    """A reply streams over the WebSocket through nginx and is stored complete."""
    socket = await open_socket(stack)
    reply = await socket.reply("Hello through nginx")
    await socket.close()
    kinds = [event["type"] for event in reply.events]
    assert kinds[0] == "accepted"
    assert "started" in kinds
    assert kinds.count("token") >= 2
    assert kinds[-1] == "done"
    message_id = reply.terminal["message"]
    [(status, content)] = stack.sql(
        "SELECT status, content FROM generation_message WHERE id = %s", message_id
    )
    assert status == "complete"
    assert content == reply.text


def test_static_files_come_from_nginx(stack):
    """/static/ is served from STATIC_ROOT by nginx; daphne never sees it."""
    marker = uuid.uuid4().hex
    with urllib.request.urlopen(f"{stack.url}/static/css/site.css?{marker}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/css"
        assert response.headers["Server"].startswith("nginx")
        assert b".topbar" in response.read()
    assert marker not in stack.log("daphne-1.access.log") + stack.log("daphne-2.access.log")


def test_django_sees_the_forwarded_client_ip(stack):
    """A login attempt from 127.0.0.2 is logged by Django with that address,
    not nginx's; a forged X-Forwarded-For is overwritten by nginx."""
    connection = http.client.HTTPConnection("127.0.0.1", PORT, source_address=("127.0.0.2", 0), timeout=30)
    username = f"nobody-{uuid.uuid4().hex[:8]}"
    connection.request("GET", "/accounts/login/")
    page = connection.getresponse()
    cookie = page.headers["Set-Cookie"].split(";")[0]
    token = csrf_token(page.read().decode())
    body = f"username={username}&password=wrong&csrfmiddlewaretoken={token}"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": cookie,
        "X-Forwarded-For": "203.0.113.9",
    }
    connection.request("POST", "/accounts/login/", body=body, headers=headers)
    assert connection.getresponse().status == 200  # the form again, with its error
    logs = stack.log("daphne-1.log") + stack.log("daphne-2.log")
    assert f"Failed login for '{username}' from 127.0.0.2" in logs


def test_csrf_is_enforced_on_forms(stack):
    """A login form posted without its CSRF token is refused."""
    request = urllib.request.Request(
        f"{stack.url}/accounts/login/", data=b"username=user1&password=" + PASSWORD.encode()
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 403


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://127.0.0.1:9999",  # the site's host on another port
        "https://127.0.0.1:{port}",  # the site's host and port over another scheme
    ],
)
async def test_cross_origin_socket_is_refused(stack, origin):
    """Through nginx, a socket whose Origin differs from the site's in host,
    port or scheme is refused with 403, session cookie or not."""
    cookie = await asyncio.to_thread(login, stack.url, "user2", PASSWORD)
    origin = origin.format(port=stack.url.rsplit(":", 1)[1])
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await ChatSocket.open(stack.ws_url, cookie, origin=origin)
    assert refused.value.response.status_code == 403


async def test_unauthenticated_socket_is_closed_with_4401(stack):
    connection = await websockets.connect(stack.ws_url, origin=stack.url)
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        await asyncio.wait_for(connection.recv(), 10)
    assert closed.value.rcvd.code == 4401


def get(url: str, cookie: str) -> str:
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_an_admin_change_reaches_both_processes(stack):
    """Staff save the console form through nginx; within a second both
    daphne processes apply the new cap."""
    cookie = login(stack.url, "staff", PASSWORD)
    console = f"{stack.url}/admin/queue/"
    token = csrf_token(get(console, cookie))
    values = {**stack.own_limits(DAPHNE_PORTS[0]), "max_concurrency": 7, "csrfmiddlewaretoken": token}
    form = urllib.request.Request(
        console, data=urllib.parse.urlencode(values).encode(), headers={"Cookie": cookie, "Referer": console}
    )
    urllib.request.urlopen(form, timeout=30)
    saved_at = time.monotonic()
    pending = set(DAPHNE_PORTS)
    while pending and time.monotonic() - saved_at < 1.0:
        pending = {port for port in pending if stack.own_limits(port)["max_concurrency"] != 7}
    assert not pending, f"processes on {sorted(pending)} did not apply the change within 1 s"
    stack.set_limits(max_concurrency=4)


def test_bench_chat_measures_through_the_stack(stack, tmp_path):
    """The stack benchmark logs in its users, chats through nginx and reports."""
    report = tmp_path / "bench.json"
    stack.manage(
        "bench_chat",
        "--url",
        stack.ws_url,
        "--clients",
        "1,2",
        "--new-tokens",
        "8",
        "--warmup",
        "2",
        "--json",
        str(report),
    )
    rows = json.loads(report.read_text())["results"]
    assert [row["clients"] for row in rows] == [1, 2]
    for row in rows:
        assert row["errors"] == {}
        assert row["completion_tokens"] > 0
        assert row["aggregate_tok_s"] > 0
        assert row["ttft_p50_ms"] <= row["ttft_p95_ms"]
    poll(lambda: stack.own_limits(DAPHNE_PORTS[0])["max_new_tokens"] == 300, timeout=5)  # restored
