"""A running service follows the console: live caps, saved settings, cancels.

These use the in-memory channel layer; test_two_processes does the same
across two server processes over Redis.
"""

import time

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from generation.runtime.types import Limits, RequestSource
from queueadmin import services
from tests.polling import wait_for
from tests.queueadmin.conftest import LIMITS as VALID_LIMITS
from tests.queueadmin.conftest import LONG, TIMEOUT, next_answer

pytestmark = pytest.mark.django_db(transaction=True)

LIMITS = {
    **VALID_LIMITS,
    "max_concurrency": 1,
    "max_new_tokens": 4000,
}  # at most half the context; holds a slot


@pytest.fixture
def one_slot(settings):
    """Start services with a cap of 1 and replies long enough to hold their slot."""
    settings.GENERATION_MAX_CONCURRENCY = 1
    settings.GENERATION_MAX_NEW_TOKENS = 4000


async def test_raising_the_cap_in_the_console_admits_waiting_requests(one_slot, live, staff, console_socket):
    """Cap 1 → 3 through the console's form: both waiting requests start at once,
    and the console's socket shows it; Cancel there stops a running request."""
    handles = [live.submit(user_id=n, messages=LONG) for n in (101, 102, 103)]
    assert (len(live.running), len(live.queue)) == (1, 2)

    client = AsyncClient()
    await client.aforce_login(staff)
    response = await client.post("/admin/queue/", {**LIMITS, "max_concurrency": 3})
    assert response.status_code == 302
    saved = time.monotonic()
    await wait_for(lambda: len(live.running) == 3, timeout=1.0)
    assert time.monotonic() - saved < 1.0
    assert live.limits.max_concurrency == 3 and not live.queue

    socket = await console_socket(staff)
    payload = await socket.receive_json_from(timeout=TIMEOUT)
    assert payload["total"]["running"] == 3 and payload["total"]["cap"] == 3
    assert {row["user"] for row in payload["running"]} == {101, 102, 103}

    victim = handles[1].id
    await socket.send_json_to({"type": "cancel", "request": victim})
    assert await next_answer(socket) == {"type": "cancel.sent", "request": victim}
    events = [event.as_dict() async for event in handles[1]]
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "cancelled"
    await socket.send_json_to({"type": "cancel", "request": "<script>"})
    assert (await next_answer(socket))["type"] == "error"


async def test_the_api_limit_is_changed_live_and_the_console_shows_sources(live, staff, console_socket):
    """A person at their API limit (2) is refused a third API request; staff
    raise the limit in the console's form and the next one starts at once.
    The console shows each request's source and the counts per source."""
    api = dict(messages=LONG, source=RequestSource.API, api_key_id=1)
    handles = [live.submit(user_id=7, messages=LONG), *(live.submit(user_id=7, **api) for _ in range(2))]
    refused = [event.as_dict() async for event in live.submit(user_id=7, **api)]
    assert refused[-1]["code"] == "busy"

    client = AsyncClient()
    await client.aforce_login(staff)
    response = await client.post("/admin/queue/", {**VALID_LIMITS, "max_active_api_per_user": 3})
    assert response.status_code == 302
    await wait_for(lambda: live.limits.max_active_api_per_user == 3, timeout=1.0)
    handles.append(live.submit(user_id=7, **api))
    assert len(live.running) == 4

    socket = await console_socket(staff)
    payload = await socket.receive_json_from(timeout=TIMEOUT)
    assert sorted(row["source"] for row in payload["running"]) == ["api", "api", "api", "chat"]
    assert payload["total"]["by_source"] == {
        "chat": {"running": 1, "waiting": 0},
        "api": {"running": 3, "waiting": 0},
    }
    for handle in handles:
        handle.cancel()


async def test_lowering_the_cap_lets_running_requests_finish(one_slot, live, staff):
    """A cap lowered by a service call applies to the next admissions only."""
    await database_sync_to_async(services.generation_settings_change)(user=staff, max_concurrency=2)
    await wait_for(lambda: live.limits.max_concurrency == 2, timeout=1.0)
    for n in (1, 2, 3):
        live.submit(user_id=n, messages=LONG)
    assert (len(live.running), len(live.queue)) == (2, 1)
    await database_sync_to_async(services.generation_settings_change)(user=staff, max_concurrency=1)
    await wait_for(lambda: live.limits.max_concurrency == 1, timeout=1.0)
    assert (len(live.running), len(live.queue)) == (2, 1)  # nobody is stopped


async def test_a_service_started_later_reads_the_saved_row(one_slot, staff, tiny_model):
    """A process that starts after the change applies the saved row, not the environment."""
    await database_sync_to_async(services.generation_settings_update)(
        user=staff, limits=Limits(**LIMITS).replace(max_concurrency=5, queue_timeout_s=42)
    )
    from generation.runtime.registry import get_service
    from queueadmin import control

    service = get_service()
    try:
        await wait_for(control.current().ready.wait, timeout=TIMEOUT)
        assert service.limits.max_concurrency == 5
        assert service.limits.queue_timeout_s == 42
    finally:
        service.stop()


@pytest.fixture
def check_every_second(settings):
    """Processes re-read the saved row every second (set before `live` starts)."""
    settings.QUEUEADMIN_SETTINGS_CHECK_S = 1


class RedisDown:
    """A channel layer whose broadcasts fail, as channels-redis's do while Redis is down."""

    async def group_send(self, group, message):
        raise ConnectionError("Connection refused")


async def test_a_lost_broadcast_is_healed_by_reading_the_saved_row(
    one_slot, check_every_second, live, staff, monkeypatch
):
    """A change saved while its broadcast fails is applied within the check
    interval; the console flags the process as behind until it is."""
    monkeypatch.setattr("queueadmin.services.get_channel_layer", RedisDown)
    await database_sync_to_async(services.generation_settings_change)(user=staff, max_concurrency=3)
    await wait_for(lambda: live.limits.max_concurrency == 3, timeout=2.5)
    from queueadmin import control

    payload = control.current().console_payload()
    [own] = payload["workers"]
    assert own["settings_version"] == payload["settings_version"] == 1 and not own["behind"]


def test_the_console_flags_a_process_behind_the_saved_version():
    """A process running an older version than another, or than the row the
    serving process read, is flagged; version 0 is the environment's defaults."""
    from queueadmin.selectors import console_payload

    def status(worker, version):
        return {
            "worker": worker,
            "model": {"name": "m", "state": "ready", "error": ""},
            "limits": {**LIMITS, "max_concurrency": 2},
            "running": [],
            "waiting": [],
            "tokens_per_s": 0.0,
            "latency": {},
            "samples": {},
            "published": 0.0,
            "settings_version": version,
        }

    payload = console_payload([status("a", 3), status("b", 2), status("c", 0)], local_worker="a")
    assert payload["settings_version"] == 3
    assert [w["behind"] for w in payload["workers"]] == [False, True, True]
    payload = console_payload([status("a", 3)], local_worker="a", saved_version=4)
    assert payload["workers"][0]["behind"] and payload["settings_version"] == 4


async def test_a_console_cancel_while_redis_is_down_says_so_and_still_applies_here(
    one_slot, live, staff, console_socket, monkeypatch
):
    """With Redis unreachable the console's Cancel still stops a reply on its
    own process, and the console is told the other processes were not reached,
    instead of the socket dying or claiming `cancel.sent`."""
    handle = live.submit(user_id=101, messages=LONG)
    socket = await console_socket(staff)
    monkeypatch.setattr("queueadmin.control.get_channel_layer", RedisDown)
    await socket.send_json_to({"type": "cancel", "request": handle.id})
    answer = await next_answer(socket)
    assert (answer["type"], answer["code"], answer["request"]) == ("error", "unavailable", handle.id)
    assert "Redis" in answer["message"]
    events = [event.as_dict() async for event in handle]
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "cancelled"
    await socket.send_json_to({"type": "cancel", "request": "ab"})  # the socket still answers
    assert (await next_answer(socket))["type"] in ("cancel.sent", "error")
