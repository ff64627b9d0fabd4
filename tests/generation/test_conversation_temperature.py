"""A person sets a conversation's temperature; its replies are sampled with it."""

import json

import pytest
from channels.db import database_sync_to_async
from django.urls import reverse

from generation import selectors, services
from generation.models import Conversation
from generation.runtime.engine import Engine
from tests.generation.conftest import receive_until


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def post_sampling(client, conversation_id: int, body) -> tuple[int, dict]:
    response = client.post(
        reverse("conversation-sampling", args=[conversation_id]),
        data=body if isinstance(body, str | bytes) else json.dumps(body),
        content_type="application/json",
    )
    return response.status_code, response.json()


@pytest.mark.django_db
def test_a_person_sets_and_clears_the_temperature(alice_client, alice):
    """The value is stored and shown with the conversation; null goes back to
    the site's default."""
    conversation = services.conversation_create(owner=alice, title="poems")
    assert selectors.conversation_serialize(conversation)["temperature"] is None
    status, body = post_sampling(alice_client, conversation.pk, {"temperature": 0.9})
    assert (status, body["conversation"]["temperature"]) == (200, 0.9)
    assert Conversation.objects.get(pk=conversation.pk).temperature == 0.9
    status, body = post_sampling(alice_client, conversation.pk, {"temperature": 0})
    assert (status, body["conversation"]["temperature"]) == (200, 0.0)
    status, body = post_sampling(alice_client, conversation.pk, {"temperature": None})
    assert (status, body["conversation"]["temperature"]) == (200, None)
    listed = alice_client.get(reverse("conversation-list")).json()["conversations"]
    assert listed[0]["temperature"] is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [{"temperature": 2.5}, {"temperature": -0.1}, {"temperature": "hot"}, {"temperature": True}, {}, [], "{"],
)
def test_a_temperature_out_of_range_is_refused_with_a_reason(alice_client, alice, body):
    conversation = services.conversation_create(owner=alice, title="poems")
    services.conversation_set_temperature(conversation=conversation, temperature=0.5)
    status, answer = post_sampling(alice_client, conversation.pk, body)
    assert status == 400
    assert "temperature" in answer["error"].lower()
    assert Conversation.objects.get(pk=conversation.pk).temperature == 0.5


@pytest.mark.django_db
def test_another_persons_conversation_is_404_and_stays_unchanged(alice_client, bob):
    conversation = services.conversation_create(owner=bob, title="bob's")
    response = alice_client.post(
        reverse("conversation-sampling", args=[conversation.pk]),
        data=json.dumps({"temperature": 1.0}),
        content_type="application/json",
    )
    assert response.status_code == 404
    assert Conversation.objects.get(pk=conversation.pk).temperature is None


@pytest.mark.django_db
def test_the_service_refuses_what_the_page_could_not_send(alice):
    conversation = services.conversation_create(owner=alice)
    for value in (float("nan"), float("inf"), 2.01, "1"):
        with pytest.raises(ValueError, match="temperature"):
            services.conversation_set_temperature(conversation=conversation, temperature=value)


@pytest.fixture
def engine_params(monkeypatch):
    """The SamplingParams each request reaches the engine with, after the
    engine filled what the request left unset (a spy: the real `add` runs)."""
    seen = []
    real_add = Engine.add

    def add(self, seq_id, prompt_ids, params):
        seen.append(params.resolved(self.defaults))
        return real_add(self, seq_id, prompt_ids, params)

    monkeypatch.setattr(Engine, "add", add)
    return seen


@pytest.mark.django_db(transaction=True)
async def test_a_conversations_temperature_reaches_the_engine(service, alice, connect_as, engine_params):
    """A reply in a conversation at temperature 1.3 is sampled at 1.3; in one
    left at the default, at the model's own (the tiny model's
    generation_config.json says greedy, and no penalty; top_p, which it does
    not state, is chatsite's fallback)."""
    chosen = await database_sync_to_async(services.conversation_create)(owner=alice, title="warm")
    await database_sync_to_async(services.conversation_set_temperature)(conversation=chosen, temperature=1.3)
    plain = await database_sync_to_async(services.conversation_create)(owner=alice, title="plain")
    communicator = await connect_as(alice)
    for conversation in (chosen, plain):
        await communicator.send_json_to({"type": "send", "conversation": conversation.pk, "content": "hello"})
        done = (await receive_until(communicator, "done"))[-1]
        assert done["finish_reason"] in ("stop", "length")
    warm, default = engine_params
    assert (warm.temperature, warm.top_p, warm.repetition_penalty) == (1.3, 0.9, 1.0)
    assert (default.temperature, default.top_p, default.repetition_penalty) == (0.0, 0.9, 1.0)
