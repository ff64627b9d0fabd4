"""An honest wait on /ws/chat/: `queued` frames say when the model is still
loading, and estimate when the reply starts (`eta_s`), on the tiny model."""

import asyncio
import threading

import pytest

from generation.runtime import registry
from queueadmin.consumers import QueueConsumer
from tests.generation.conftest import TIMEOUT, receive_until
from tests.generation.test_consumers import send_frame

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def slow_load(tiny_model, monkeypatch):
    """The model load waits until the test opens the returned gate, as a
    first load of a big model does for minutes. The service is stopped at
    teardown."""
    gate = threading.Event()
    configured = registry.configured_model_loader

    def gated_loader():
        load = configured()

        def load_after_gate():
            gate.wait(TIMEOUT)
            return load()

        return load_after_gate

    monkeypatch.setattr(registry, "configured_model_loader", gated_loader)
    yield gate
    gate.set()
    service = registry._service
    if service is not None and service.loop is asyncio.get_running_loop():
        service.stop()


async def test_the_queued_frame_says_the_model_is_loading(
    slow_load, alice, django_user_model, connect_as, websocket_as
):
    """Sent while the model loads, a message is queued with model_state
    "loading" and no estimate, and the console shows the model loading with
    the message waiting; once loaded, the reply starts and ends."""
    chat = await connect_as(alice)
    service = registry._service
    service.update_limits(service.limits.replace(max_new_tokens=5))
    await chat.send_json_to(send_frame())
    queued = (await receive_until(chat, "queued"))[-1]
    assert (queued["model_state"], queued["eta_s"], queued["position"]) == ("loading", None, 1)
    staff = await django_user_model.objects.acreate(username="sam", is_staff=True, is_superuser=True)
    console = await websocket_as(QueueConsumer, "/ws/queue/", staff)
    payload = await console.receive_json_from(timeout=TIMEOUT)
    assert payload["workers"][0]["model"]["state"] == "loading"
    assert [(row["position"], row["eta_s"]) for row in payload["waiting"]] == [(1, None)]
    slow_load.set()
    frames = await receive_until(chat, "done")
    assert "started" in [frame["type"] for frame in frames]
    assert all(frame["model_state"] == "ready" for frame in frames if frame["type"] == "queued")


async def test_a_page_reloaded_while_the_model_loads_is_told_so_again(slow_load, alice, connect_as):
    """A page that reloads while its message waits for the model load
    re-attaches to a reply that says the model is loading (not only a
    position); once loaded, the reply starts on the reloaded page."""
    chat = await connect_as(alice)
    service = registry._service
    service.update_limits(service.limits.replace(max_new_tokens=5))
    await chat.send_json_to(send_frame())
    accepted = (await receive_until(chat, "queued"))[0]
    await chat.disconnect(timeout=TIMEOUT)

    reloaded = await connect_as(alice)
    await reloaded.send_json_to({"type": "open", "conversation": accepted["conversation"]})
    attached = await reloaded.receive_json_from(TIMEOUT)
    assert (attached["type"], attached["message"], attached["position"]) == ("attached", None, 1)
    assert (attached["model_state"], attached["eta_s"]) == ("loading", None)
    slow_load.set()
    frames = await receive_until(reloaded, "done")
    assert "started" in [frame["type"] for frame in frames]


async def test_eta_is_null_then_a_number_once_replies_finished(
    service, alice, bob, django_user_model, connect_as
):
    """With one slot taken: no history, no estimate; after three replies
    completed on the site, the waiting person gets one in whole seconds."""
    carol = await django_user_model.objects.acreate(username="carol")
    service.update_limits(service.limits.replace(max_concurrency=1, max_new_tokens=4000))
    long, waiting = await connect_as(bob), await connect_as(carol)
    await long.send_json_to(send_frame())
    await receive_until(long, "started")
    await waiting.send_json_to(send_frame())
    queued = (await receive_until(waiting, "queued"))[-1]
    assert (queued["model_state"], queued["eta_s"]) == ("ready", None)
    for chat in (long, waiting):
        await chat.send_json_to({"type": "cancel"})
        await receive_until(chat, "done")

    service.update_limits(service.limits.replace(max_new_tokens=5))
    chat = await connect_as(alice)
    conversation = None
    for index in range(3):
        await chat.send_json_to(send_frame(f"Question {index}", conversation))
        frames = await receive_until(chat, "done")
        conversation = frames[0]["conversation"]

    service.update_limits(service.limits.replace(max_new_tokens=4000))
    await long.send_json_to(send_frame("again"))
    await receive_until(long, "started")
    await waiting.send_json_to(send_frame("again"))
    queued = (await receive_until(waiting, "queued"))[-1]
    assert queued["model_state"] == "ready"
    assert isinstance(queued["eta_s"], int) and queued["eta_s"] >= 1
    for chat in (long, waiting):
        await chat.send_json_to({"type": "cancel"})
        await receive_until(chat, "done")


async def test_a_waiting_person_is_told_a_priority_request_moved_them_back(slow_load, alice, bob, connect_as):
    """With a priority class holding bob, alice waits at 1 (the model still
    loading, so nothing starts); bob's message goes ahead of hers, and her
    next `queued` frame says position 2 with moved_back."""
    from generation.runtime.admission.order import PriorityClass, PriorityPolicy

    alice_chat = await connect_as(alice)
    service = registry._service
    service.update_priority(PriorityPolicy(classes=(PriorityClass("support", 1, frozenset({str(bob.pk)})),)))
    await alice_chat.send_json_to(send_frame())
    first = (await receive_until(alice_chat, "queued"))[-1]
    assert first["position"] == 1 and "moved_back" not in first
    bob_chat = await connect_as(bob)
    await bob_chat.send_json_to(send_frame())
    assert (await receive_until(bob_chat, "queued"))[-1]["position"] == 1
    moved = (await receive_until(alice_chat, "queued"))[-1]
    assert (moved["position"], moved["waiting"], moved.get("moved_back")) == (2, 2, True)
    for chat in (alice_chat, bob_chat):
        await chat.send_json_to({"type": "cancel"})
