"""The /v1/ views in process (Django's AsyncClient) against the real generation
service on the tiny model: who may call, what stops an open stream. The
OpenAI SDK's view of the same endpoints, on a live daphne, is in
test_api_live.py."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from generation import services, watch
from generation.api import views
from generation.models import ApiKey, Conversation
from generation.runtime import eta
from generation.runtime.types import Outcome, RequestSource
from tests.generation.test_service import collect
from tests.polling import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/chat/completions"


@pytest.fixture
def alice_token(alice) -> str:
    """An API key of alice's; the token."""
    return services.api_key_create(user=alice, name="script")[1]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def post(client, token: str | None, model: str, **fields):
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], **fields}
    headers = bearer(token) if token else {}
    return await client.post(URL, data=json.dumps(body), content_type="application/json", headers=headers)


def records_of(service) -> list:
    """The records `service` hands its listeners from now on."""
    records = []
    service.record_listeners.append(records.append)
    return records


class StreamReader:
    """Reads a streamed answer's events (comments and data) as they come."""

    def __init__(self, response):
        self.content = aiter(response.streaming_content)
        self.buffer = b""

    async def event(self, timeout: float = 10) -> bytes:
        while b"\n\n" not in self.buffer:
            self.buffer += await asyncio.wait_for(anext(self.content), timeout)
        event, self.buffer = self.buffer.split(b"\n\n", 1)
        return event

    async def until(self, prefix: bytes, timeout: float = 10) -> list[bytes]:
        events = [await self.event(timeout)]
        while not events[-1].startswith(prefix):
            events.append(await self.event(timeout))
        return events


async def test_a_session_cookie_never_authenticates(service, alice):
    """Logged in to the site but without a key: 401 in OpenAI's shape, for
    both endpoints; CSRF does not apply (no token is sent, and it is not 403)."""
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(alice)
    assert (await client.get("/")).status_code == 200  # the session works for the chat
    for response in (await post(client, None, "any"), await client.get("/v1/models")):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response["WWW-Authenticate"].startswith("Bearer")


async def test_unknown_and_revoked_keys_are_refused(service, alice_token):
    client = AsyncClient()
    assert (await client.get("/v1/models", headers=bearer(alice_token))).status_code == 200
    assert (await client.get("/v1/models", headers=bearer(alice_token + "x"))).status_code == 401
    key = await ApiKey.objects.aget()
    await sync_to_async(services.api_key_revoke)(api_key=key)
    response = await client.get("/v1/models", headers=bearer(alice_token))
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_the_model_card_says_the_models_context_window(service, alice_token, tiny_model):
    """GET /v1/models lists the served model in OpenAI's shape plus vLLM's
    `max_model_len` (the tiny model's context), which clients and another
    chatsite's openai backend size their prompts by; so does /v1/models/{id}."""
    client = AsyncClient()
    listed = (await client.get("/v1/models", headers=bearer(alice_token))).json()
    model = views.served_model_id(service)
    context = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    assert listed["object"] == "list"
    assert [{**card, "created": 0} for card in listed["data"]] == [
        {"id": model, "object": "model", "created": 0, "owned_by": "chatsite", "max_model_len": context}
    ]
    card = (await client.get(f"/v1/models/{model}", headers=bearer(alice_token))).json()
    assert card == listed["data"][0]


async def test_a_bad_body_is_400_naming_the_field_and_queues_nothing(service, alice_token):
    records = records_of(service)
    model = views.served_model_id(service)
    response = await post(AsyncClient(), alice_token, model, n=2)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert (await AsyncClient().get(URL, headers=bearer(alice_token))).status_code == 405
    await asyncio.sleep(0.1)
    assert records == []


async def test_an_answer_leaves_a_record_marked_api_and_no_conversation(service, alice_token):
    records = records_of(service)
    model = views.served_model_id(service)
    response = await post(AsyncClient(), alice_token, model, max_tokens=3, temperature=0)
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["completion_tokens"] == 3
    record = (await wait_for(lambda: records))[0]
    key = await ApiKey.objects.aget()
    assert (record.source, record.api_key_id, record.outcome) == (
        RequestSource.API,
        key.pk,
        Outcome.COMPLETED,
    )
    assert not await Conversation.objects.aexists()
    assert (await ApiKey.objects.aget()).last_used_at is not None


async def test_revoking_the_key_stops_its_open_stream_at_once(service, alice_token, monkeypatch):
    """The stream ends with an error event and [DONE] as soon as the revoke
    commits (the channel-layer event; the watch, which would notice within
    half a second, is slowed down here), and the request is cancelled."""
    monkeypatch.setattr(watch, "CHECK_INTERVAL_S", 60)
    service.update_limits(service.limits.replace(max_new_tokens=4000))
    records = records_of(service)
    response = await post(AsyncClient(), alice_token, views.served_model_id(service), stream=True)
    reader = StreamReader(response)
    await reader.until(b'data: {"id"')  # the role chunk: it runs
    key = await ApiKey.objects.aget()
    await sync_to_async(services.api_key_revoke)(api_key=key)
    loop = asyncio.get_running_loop()
    began = loop.time()
    events = await reader.until(b"data: [DONE]", timeout=5)
    assert loop.time() - began < 1
    error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "invalid_api_key"
    assert (await wait_for(lambda: records))[0].outcome == Outcome.CANCELLED


async def test_deactivating_the_owner_stops_a_waiting_stream(service, alice, bob, alice_token):
    """Queued behind another request, the stream learns of the deactivation
    from the watch within a second and ends; the request leaves the queue."""
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    blocker = service.submit(user_id=bob.pk, messages=[{"role": "user", "content": "hello"}])
    response = await post(AsyncClient(), alice_token, views.served_model_id(service), stream=True)
    reader = StreamReader(response)
    assert await reader.event() == b": queued position=1 waiting=1"
    alice.is_active = False
    await alice.asave()
    events = await reader.until(b"data: [DONE]", timeout=2)
    assert json.loads(events[-2].removeprefix(b"data: "))["error"]["code"] == "invalid_api_key"
    await wait_for(lambda: not service.queue)
    blocker.cancel()


async def test_a_waiting_stream_repeats_its_place(service, bob, alice_token, monkeypatch):
    """With nothing new to say, a waiting stream repeats its place every
    KEEPALIVE_S (10 s; shortened here), so that proxies keep it open."""
    monkeypatch.setattr(views, "KEEPALIVE_S", 0.2)
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    blocker = service.submit(user_id=bob.pk, messages=[{"role": "user", "content": "hello"}])
    response = await post(
        AsyncClient(), alice_token, views.served_model_id(service), stream=True, max_tokens=2
    )
    assert response["Content-Type"].startswith("text/event-stream")
    reader = StreamReader(response)
    assert [await reader.event(timeout=1) for _ in range(3)] == [b": queued position=1 waiting=1"] * 3
    blocker.cancel()
    await reader.until(b'data: {"id"')  # it started
    await reader.until(b"data: [DONE]")


async def test_a_waiting_stream_says_about_when_it_starts(service, bob, alice_token):
    """Once a few replies have finished here, the place comes with the same
    estimate as the chat's queued frame (`eta_s`, whole seconds)."""
    hello = [{"role": "user", "content": "hello"}]
    for _ in range(eta.MIN_SAMPLES):
        assert (await collect(service.submit(user_id=bob.pk, messages=hello, max_new_tokens=2)))[-1][
            "type"
        ] == "done"
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    blocker = service.submit(user_id=bob.pk, messages=hello)
    response = await post(
        AsyncClient(), alice_token, views.served_model_id(service), stream=True, max_tokens=2
    )
    reader = StreamReader(response)
    first = await reader.event()
    blocker.cancel()
    place, _, estimate = first.rpartition(b" eta_s=")
    assert place == b": queued position=1 waiting=1"
    assert int(estimate) >= 0
    await reader.until(b"data: [DONE]")


async def test_a_queue_timeout_is_a_503_or_an_error_event_once_streaming(service, bob, alice_token):
    """While bob's long reply holds the only slot, alice's requests time out
    in the queue: the whole answer is a 503 `queue_timeout` with Retry-After;
    a stream, already open with its place, ends with an error event and
    [DONE]. Both leave a record."""
    records = records_of(service)
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000, queue_timeout_s=0.5))
    blocker = service.submit(user_id=bob.pk, messages=[{"role": "user", "content": "hello"}])
    model = views.served_model_id(service)
    whole = await post(AsyncClient(), alice_token, model)
    assert (whole.status_code, whole.json()["error"]["code"]) == (503, "queue_timeout")
    assert whole["Retry-After"] == "10"

    reader = StreamReader(await post(AsyncClient(), alice_token, model, stream=True))
    events = await reader.until(b"data: [DONE]")
    blocker.cancel()
    assert events[0] == b": queued position=1 waiting=1"
    assert json.loads(events[-2].removeprefix(b"data: "))["error"]["code"] == "queue_timeout"
    api = [r.outcome for r in records if r.source is RequestSource.API]
    assert api == [Outcome.TIMEOUT, Outcome.TIMEOUT]
