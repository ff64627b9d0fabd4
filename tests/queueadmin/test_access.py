"""Who may see the console, status.json, /ws/queue/ and /metrics."""

import pytest
from django.test import AsyncClient

from queueadmin.consumers import FORBIDDEN, UNAUTHENTICATED
from queueadmin.metrics import metrics_allowed
from tests.polling import wait_for
from tests.queueadmin.conftest import TIMEOUT


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["anonymous", "member"])
def test_console_page_sends_others_to_the_admin_login(client, member, who):
    """Anonymous and non-staff users get the admin login, for the page and its history."""
    if who == "member":
        client.force_login(member)
    for path in ("/admin/queue/", "/admin/queue/history.json"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=/admin/queue/")


@pytest.mark.django_db
def test_console_page_renders_for_staff(client, staff):
    """Staff see the console with its socket path, chart library and form."""
    client.force_login(staff)
    page = client.get("/admin/queue/").content.decode()
    assert 'data-ws-path="/ws/queue/"' in page
    assert "vendor/uplot/uPlot.iife.min.js" in page and "js/console.js" in page
    assert 'name="max_concurrency"' in page
    assert client.get("/admin/queue/history.json").json().keys() == {
        "time",
        "running",
        "waiting",
        "tokens_per_s",
    }


@pytest.mark.django_db
def test_status_json_refuses_anonymous_and_members(client, member):
    """status.json answers 401 without a login and 403 for non-staff (no redirect)."""
    assert client.get("/admin/queue/status.json").status_code == 401
    client.force_login(member)
    assert client.get("/admin/queue/status.json").status_code == 403


@pytest.mark.django_db(transaction=True)
async def test_status_json_for_staff(live, staff):
    """Staff get the console payload: each process and the total."""
    client = AsyncClient()
    await client.aforce_login(staff)
    payload = (await client.get("/admin/queue/status.json")).json()
    assert payload["type"] == "queue.status"
    [worker] = payload["workers"]
    assert worker["worker"] == live.worker_name and worker["local"]
    assert worker["model"]["state"] == "ready"
    model = worker["model"]
    assert (model["backend"], model["host"], model["name"]) == ("local", "in-process", live.model_name)
    assert model["context_tokens"] == 8192  # the tiny model's
    assert payload["total"]["cap"] == live.limits.max_concurrency
    assert set(payload["total"]["latency"]) == {"ttft_ms", "queue_wait_ms"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("who", "code"), [("anonymous", UNAUTHENTICATED), ("member", FORBIDDEN)])
async def test_queue_socket_closes_for_others(console_socket, member, who, code):
    """An anonymous socket is closed with 4401, a non-staff one with 4403."""
    from django.contrib.auth.models import AnonymousUser

    socket = await console_socket(AnonymousUser() if who == "anonymous" else member)
    assert await socket.receive_output(TIMEOUT) == {"type": "websocket.close", "code": code}


@pytest.mark.django_db(transaction=True)
async def test_queue_socket_streams_to_staff(live, staff, console_socket):
    """Staff receive the payload at least once a second."""
    socket = await console_socket(staff)
    first = await socket.receive_json_from(timeout=TIMEOUT)
    second = await socket.receive_json_from(timeout=TIMEOUT)
    assert first["type"] == second["type"] == "queue.status"
    assert 0 < second["time"] - first["time"] <= 1.0
    assert first["workers"][0]["worker"] == live.worker_name


@pytest.mark.django_db(transaction=True)
async def test_metrics_from_loopback(live):
    """/metrics answers a direct loopback request, but not one through a proxy."""
    client = AsyncClient()
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"chatsite_num_requests_running" in response.content
    # The backend and its state, from the control's next publish tick.
    backend = f'chatsite_backend_info{{host="in-process",kind="local",model="{live.model_name}"}} 1.0'

    async def described():
        body = (await client.get("/metrics")).content.decode()
        return body if backend in body else None

    text = await wait_for(described, timeout=TIMEOUT)
    assert 'chatsite_model_state{chatsite_model_state="ready"} 1.0' in text
    proxied = await client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 403


@pytest.mark.django_db
def test_metrics_from_elsewhere_needs_the_token(client, staff, rf, settings):
    """From elsewhere, only the bearer token opens /metrics; a staff session does not."""
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics", **remote).status_code == 403
    client.force_login(staff)
    assert client.get("/metrics", **remote).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}, **remote).status_code == 403
    assert metrics_allowed(rf.get("/metrics", headers={"Authorization": "Bearer s3cret"}, **remote))
    assert metrics_allowed(rf.get("/metrics", REMOTE_ADDR="::1"))
    settings.METRICS_TOKEN = ""  # no token configured: no bearer value works
    assert not metrics_allowed(rf.get("/metrics", headers={"Authorization": "Bearer "}, **remote))
