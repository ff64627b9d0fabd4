"""What the console and /metrics say about the site-wide queue (issue #11).

The fallback tests use a real fallback: the service's site queue points at
a closed port, so its first Redis call fails and it falls back to its own
queue and cap, as it would when Redis goes away. The site-wide test runs
three services on the shared Redis, under a key prefix of its own.
"""

import asyncio
import time
import uuid

import pytest
import redis.asyncio as redis
from django.test import AsyncClient

from generation.runtime.admission import RedisAdmission
from generation.runtime.sitequeue import SiteQueue
from queueadmin.selectors import FALLBACK_WARNING, console_payload
from tests.polling import wait_for
from tests.queueadmin.conftest import LONG, TIMEOUT

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused


@pytest.fixture
def unreachable_site_queue(settings):
    """Services start with a site queue whose Redis cannot be reached, a
    cap of 4, an own bound of 2, and replies long enough to hold a slot.
    Only the site queue reads REDIS_URL here; the channel layer stays in memory."""
    settings.REDIS_URL = CLOSED
    settings.GENERATION_SITE_QUEUE = True
    settings.GENERATION_MAX_CONCURRENCY = 4
    settings.GENERATION_PROCESS_MAX_CONCURRENCY = 2
    settings.GENERATION_MAX_NEW_TOKENS = 4000


@pytest.mark.django_db(transaction=True)
async def test_the_console_warns_when_a_process_falls_back(unreachable_site_queue, live, staff, member):
    """Redis unreachable: staff see the warning, the reason (which names
    Redis's address), that limits apply per process, and both bounds; the
    headline counts this process's own bound. Non-staff see none of it."""
    assert live.site is not None
    replies = [live.submit(user_id=n, messages=LONG) for n in (1, 2, 3)]
    await wait_for(lambda: not live.site.active, timeout=TIMEOUT)
    await wait_for(lambda: len(live.running) == 2, timeout=TIMEOUT)  # its own bound, not the cap of 4

    client = AsyncClient()
    await client.aforce_login(staff)
    payload = (await client.get("/admin/queue/status.json")).json()
    assert payload["admission"] == {
        "scope": "process",
        "fallback": [live.worker_name],
        "message": FALLBACK_WARNING,
    }
    assert FALLBACK_WARNING == "Redis cannot be reached: limits apply per process until it is back."
    [worker] = payload["workers"]
    assert worker["admission"]["scope"] == "process" and worker["admission"]["fallback"]
    assert (
        "cannot be reached" in worker["admission"]["error"] and "127.0.0.1:1" in worker["admission"]["error"]
    )
    assert (worker["cap"], worker["process_max_concurrency"], worker["bound"]) == (4, 2, 2)
    total = payload["total"]
    assert (total["running"], total["cap"], total["waiting"], total["site_cap"]) == (2, 2, 1, None)

    others = AsyncClient()
    assert (await others.get("/admin/queue/status.json")).status_code == 401
    await others.aforce_login(member)
    assert (await others.get("/admin/queue/status.json")).status_code == 403
    page = await others.get("/admin/queue/")
    assert page.status_code == 302 and "127.0.0.1:1" not in page.content.decode()
    for handle in replies:
        handle.cancel()


@pytest.mark.django_db(transaction=True)
async def test_metrics_say_the_process_fell_back(unreachable_site_queue, live):
    """/metrics: scope `process`, fallback 1 and the own bound, without the
    error's words (they may name a host, and /metrics is not staff-only)."""
    from queueadmin import metrics

    metrics.observe_admission({"scope": "site", "fallback": False})  # not what a previous test left
    await wait_for(lambda: not live.site.active, timeout=TIMEOUT)
    client = AsyncClient()

    async def fallen_back():
        body = (await client.get("/metrics")).content.decode()
        return body if "chatsite_admission_fallback 1.0" in body else None

    text = await wait_for(fallen_back, timeout=TIMEOUT)
    assert 'chatsite_admission_scope{chatsite_admission_scope="process"} 1.0' in text
    assert 'chatsite_admission_scope{chatsite_admission_scope="site"} 0.0' in text
    assert "chatsite_process_max_concurrency 2.0" in text
    assert "chatsite_max_concurrency 4.0" in text
    assert "127.0.0.1:1" not in text


@pytest.mark.django_db(transaction=True)
async def test_metrics_without_a_site_queue(live):
    """No REDIS_URL: the process admits by its own queue, which is no fallback."""
    from queueadmin import metrics

    # As a previous fallback would have left them (the registry lives as long as the process).
    metrics.observe_admission({"scope": "site", "fallback": True})
    client = AsyncClient()

    async def described():
        body = (await client.get("/metrics")).content.decode()
        return body if "chatsite_admission_fallback 0.0" in body else None

    text = await wait_for(described, timeout=TIMEOUT)  # set by the control's next publish tick
    assert 'chatsite_admission_scope{chatsite_admission_scope="process"} 1.0' in text
    assert 'chatsite_admission_scope{chatsite_admission_scope="site"} 0.0' in text


def _status(service) -> dict:
    """A process's published status, as queueadmin.control builds it."""
    return {**service.status(), "latency": {}, "samples": {}, "published": time.time(), "settings_version": 0}


async def test_site_wide_totals_count_the_site_cap_once(make_service):
    """Three processes on one site queue with cap 2: the console's total is
    2 running out of a cap of 2 (not 6), a max queue of 10 (not 30), and the
    waiting rows carry the site-wide positions 1..3, each once."""
    prefix = f"test:{uuid.uuid4().hex}"
    services = []
    for name in ("p0", "p1", "p2"):
        service = await make_service(max_concurrency=2, max_new_tokens=3000, max_queue_size=10)
        service.worker_name = name
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=1, socket_connect_timeout=1)
        service.site = SiteQueue(
            service, RedisAdmission(client, prefix=prefix, lease_s=1.5), process=name, poll_s=0.2, probe_s=0.3
        )
        service.site.start()
        services.append(service)
    await wait_for(lambda: all(s.model_state == "ready" for s in services), timeout=60)
    handles = []
    for index in range(5):
        handles.append(services[index % 3].submit(user_id=index, messages=LONG))
        await asyncio.sleep(0.05)

    def settled():
        waiting = [r for s in services for r in s.queue]
        return sum(len(s.running) for s in services) == 2 and all(
            r.position and r.position[1] == 3 for r in waiting
        )

    await wait_for(settled, timeout=30)
    payload = console_payload([_status(s) for s in services], local_worker="p0")
    assert payload["admission"] == {"scope": "site", "fallback": [], "message": ""}
    total = payload["total"]
    assert (total["running"], total["cap"], total["site_cap"]) == (2, 2, 2)
    assert (total["waiting"], total["max_queue"]) == (3, 10)
    assert sorted(row["position"] for row in payload["waiting"]) == [1, 2, 3]
    for handle in handles:
        handle.cancel()


def test_totals_with_own_bounds_and_a_fallen_back_process():
    """Site cap 8 shared by two processes whose engines run 2 each, and a
    third that fell back to its own cap (bounded to 2 as well): at most
    2 + 2 + 2 = 6 can run, the site's cap is 8, and the queue bound is the
    site's 32 plus the fallen-back process's own 32."""
    limits = {
        "max_concurrency": 8,
        "max_queue_size": 32,
        "max_active_per_user": 1,
        "queue_timeout_s": 300,
        "max_new_tokens": 512,
    }

    def status(worker, scope, fallback=False):
        return {
            "worker": worker,
            "model": {"name": "m", "state": "ready", "error": ""},
            "limits": limits,
            "process_max_concurrency": 2,
            "admission": {"scope": scope, "fallback": fallback, "error": "down" if fallback else ""},
            "running": [],
            "waiting": [],
            "tokens_per_s": 0.0,
            "latency": {},
            "samples": {},
            "published": 0.0,
        }

    payload = console_payload([status("a", "site"), status("b", "site"), status("c", "process", True)])
    assert payload["admission"] == {"scope": "mixed", "fallback": ["c"], "message": FALLBACK_WARNING}
    total = payload["total"]
    assert (total["cap"], total["site_cap"], total["max_queue"]) == (6, 8, 64)
    assert [w["bound"] for w in payload["workers"]] == [2, 2, 2]
