"""Statistics: one record per request with the right outcome and timings,
snapshots while busy, latency percentiles, metrics and pruning."""

import datetime

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone

from generation.runtime.requests import GenerationRequest
from generation.runtime.sampling import SamplingParams
from generation.runtime.types import Outcome, RequestRecord, RequestSource
from generation.services import api_key_create
from queueadmin import control, metrics, recorder, services
from queueadmin.models import GenerationRecord, QueueSnapshot
from tests.polling import wait_for
from tests.queueadmin.conftest import LONG

SHORT = [{"role": "user", "content": "What is the capital of France?"}]


async def finish(handle) -> dict:
    return [event async for event in handle][-1].as_dict()


@database_sync_to_async
def stored(ids):
    return {r.request_id: r for r in GenerationRecord.objects.filter(request_id__in=ids)}


@pytest.fixture
def tight(settings, monkeypatch):
    """One slot, a queue of one, a one-second queue timeout, snapshots every 0.3 s."""
    settings.GENERATION_MAX_CONCURRENCY = 1
    settings.GENERATION_MAX_QUEUE = 1
    settings.GENERATION_QUEUE_TIMEOUT_S = 1
    settings.GENERATION_MAX_NEW_TOKENS = 6000
    monkeypatch.setattr(control, "SNAPSHOT_INTERVAL_S", 0.3)


@pytest.mark.django_db(transaction=True)
async def test_records_and_snapshots_of_every_outcome(tight, live, django_user_model):
    """Completed, rejected (busy, queue_full), timed-out, cancelled and interrupted
    requests each get one record with consistent times; snapshots track the queue."""
    ann = await database_sync_to_async(django_user_model.objects.create_user)("ann")
    completed = live.submit(user_id=ann.pk, messages=SHORT, max_new_tokens=5, meta={"user": "ann"})
    assert (await finish(completed))["finish_reason"] == "length"

    cancelled = live.submit(user_id=ann.pk, messages=LONG)  # holds the only slot
    busy = live.submit(user_id=ann.pk, messages=LONG)  # ann already has one
    timeout = live.submit(user_id=2, messages=LONG)  # waits, then times out
    full = live.submit(user_id=3, messages=LONG)  # the queue holds one
    assert (await finish(busy))["code"] == "busy"
    assert (await finish(full))["code"] == "queue_full"
    assert (await finish(timeout))["code"] == "queue_timeout"
    await wait_for(lambda: live.running[cancelled.id].completion_tokens > 20)
    cancelled.cancel()
    assert (await finish(cancelled))["finish_reason"] == "cancelled"

    ids = [h.id for h in (completed, cancelled, busy, timeout, full)]
    records = await wait_for(lambda: _all(stored(ids), len(ids)), timeout=5)
    expected = {completed: "completed", cancelled: "cancelled", busy: "rejected", timeout: "timeout"}
    expected[full] = "rejected"
    assert {h.id: records[h.id].outcome for h in expected} == {h.id: o for h, o in expected.items()}

    done = records[completed.id]
    assert done.user_id == ann.pk and done.worker == live.worker_name
    assert done.enqueued_at <= done.started_at <= done.first_token_at <= done.finished_at
    assert (done.completion_tokens, done.finish_reason) == (5, "length") and done.prompt_tokens > 0
    stopped = records[cancelled.id]
    assert stopped.finish_reason == "cancelled" and stopped.completion_tokens > 20
    late = records[timeout.id]
    assert late.user_id is None  # no such user: the link is dropped, the record kept
    assert late.started_at is None and late.error_code == "queue_timeout"
    assert 0.9 <= (late.finished_at - late.enqueued_at).total_seconds() < 3
    for rejected in (records[busy.id], records[full.id]):
        assert rejected.started_at is None and rejected.completion_tokens == 0

    latency = control.current().status()["latency"]
    assert latency["ttft_ms"]["count"] == 2 and latency["queue_wait_ms"]["count"] == 2
    assert latency["ttft_ms"]["p50"] <= latency["ttft_ms"]["p95"]

    snapshots = await database_sync_to_async(list)(QueueSnapshot.objects.filter(worker=live.worker_name))
    assert any(s.running == 1 and s.cap == 1 and s.tokens > 0 for s in snapshots)
    assert any(s.waiting == 1 for s in snapshots)

    interrupted = live.submit(user_id=4, messages=LONG)
    await wait_for(lambda: interrupted.id in live.running)
    live.stop()  # what is in flight when a service stops is recorded as interrupted
    assert (await stored([interrupted.id]))[interrupted.id].outcome == "interrupted"


@pytest.mark.django_db(transaction=True)
async def test_records_say_whether_the_chat_or_which_api_key_sent_them(live, django_user_model):
    """A chat reply's record says "chat"; an API request's says "api" and
    links its key. One whose owner was deleted while it ran keeps its
    source and loses the links."""
    create_user = database_sync_to_async(django_user_model.objects.create_user)
    ann, bob = await create_user("ann"), await create_user("bob")
    key, _ = await database_sync_to_async(api_key_create)(user=ann, name="laptop")
    bobs_key, _ = await database_sync_to_async(api_key_create)(user=bob, name="script")
    short = dict(messages=SHORT, max_new_tokens=3)
    chat = live.submit(user_id=ann.pk, **short)
    api = live.submit(user_id=ann.pk, source=RequestSource.API, api_key_id=key.pk, **short)
    orphan = live.submit(user_id=bob.pk, source=RequestSource.API, api_key_id=bobs_key.pk, **short)
    await database_sync_to_async(bob.delete)()  # and with him, his keys
    for handle in (chat, api, orphan):
        assert (await finish(handle))["type"] == "done"
    ids = [chat.id, api.id, orphan.id]
    records = await wait_for(lambda: _all(stored(ids), len(ids)), timeout=5)
    links = {i: (records[i].source, records[i].user_id, records[i].api_key_id) for i in ids}
    assert links == {
        chat.id: ("chat", ann.pk, None),
        api.id: ("api", ann.pk, key.pk),
        orphan.id: ("api", None, None),
    }


@pytest.mark.django_db
def test_the_records_admin_shows_api_and_chat_traffic_apart(admin_client):
    """Staff filter the records by source; each row says its source."""
    now = timezone.now()
    for source in ("chat", "api"):
        GenerationRecord.objects.create(
            request_id=f"from-{source}", source=source, worker="w", enqueued_at=now, outcome="completed"
        )
    page = admin_client.get("/admin/queueadmin/generationrecord/", {"source": "api"}).content.decode()
    assert "from-api" in page and "from-chat" not in page
    assert admin_client.get("/admin/queueadmin/generationrecord/", {"source": "chat"}).status_code == 200


async def _all(records_coroutine, count):
    records = await records_coroutine
    return records if len(records) == count else None


@pytest.mark.django_db(transaction=True)
async def test_metrics_count_requests_and_tokens(live, settings):
    """The Prometheus text carries vLLM-style names with this process's numbers."""
    before = metrics.GENERATION_TOKENS._value.get()
    handle = live.submit(user_id=1, messages=SHORT, max_new_tokens=4)
    assert (await finish(handle))["finish_reason"] == "length"
    await wait_for(lambda: metrics.GENERATION_TOKENS._value.get() >= before + 4, timeout=3)
    text = metrics.render().decode()
    for name in (
        "chatsite_num_requests_running ",
        "chatsite_num_requests_waiting ",
        "chatsite_time_to_first_token_seconds_bucket",
        "chatsite_request_queue_time_seconds_count",
        "chatsite_generation_tokens_total",
        'chatsite_request_success_total{finished_reason="length"}',
    ):
        assert name in text


@pytest.mark.django_db(transaction=True)
async def test_metrics_count_the_prompt_tokens_a_next_turn_reused(live):
    """A conversation's second turn reuses the first turn's keys and values
    (prefix reuse), and /metrics counts those prompt tokens."""
    before = metrics.PREFIX_CACHE_HIT_TOKENS._value.get()
    done = await finish(live.submit(user_id=1, messages=SHORT, max_new_tokens=4))
    history = [*SHORT, {"role": "assistant", "content": done["text"]}, {"role": "user", "content": "Sure?"}]
    second = await finish(live.submit(user_id=1, messages=history, max_new_tokens=4))
    assert second["type"] == "done"
    first_prompt = done["usage"]["prompt_tokens"]
    await wait_for(
        lambda: metrics.PREFIX_CACHE_HIT_TOKENS._value.get() >= before + first_prompt - 1, timeout=3
    )
    assert "chatsite_prefix_cache_hit_tokens_total" in metrics.render().decode()


@pytest.mark.django_db
def test_prune_stats_removes_old_rows():
    """prune_stats --days N deletes records and snapshots older than N days."""
    now = timezone.now()
    for age in (1, 10):
        when = now - datetime.timedelta(days=age)
        GenerationRecord.objects.create(
            request_id=f"r{age}", worker="w", enqueued_at=when, outcome="completed"
        )
        QueueSnapshot.objects.create(
            worker="w", taken=when, running=1, waiting=0, cap=1, tokens=5, interval_s=5
        )
    call_command("prune_stats", "--days", "7")
    assert list(GenerationRecord.objects.values_list("request_id", flat=True)) == ["r1"]
    assert QueueSnapshot.objects.count() == 1


@pytest.mark.django_db(transaction=True)
async def test_records_written_while_the_database_is_away_are_kept_for_the_next_flush(monkeypatch):
    """A flush that finds the database unreachable loses nothing: the batch
    is written by the next flush, with what arrived meanwhile."""

    def record(user: int) -> RequestRecord:
        request = GenerationRequest(
            user_id=user, messages=SHORT, params=SamplingParams(max_new_tokens=8), meta={}
        )
        return RequestRecord.of(
            request, worker="w", finished_at=request.enqueued_at, outcome=Outcome.CANCELLED
        )

    stats = recorder.StatsRecorder()
    first, second = record(1), record(2)
    stats.add_record(first)
    real = services.stats_batch_create

    def database_away(**batch):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "stats_batch_create", database_away)  # a fault on cue
    await stats.flush()
    stats.add_record(second)
    monkeypatch.setattr(services, "stats_batch_create", real)
    await stats.flush()
    assert set(await stored([first.request_id, second.request_id])) == {first.request_id, second.request_id}
