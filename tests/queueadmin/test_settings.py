"""The settings row: defaults, validation, audit, and the broadcast after commit."""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.test import AsyncClient

from generation.runtime import registry
from generation.runtime.types import Limits
from queueadmin import events, selectors, services
from queueadmin.models import GenerationSettings, SettingsChange
from tests.generation.fake_openai import FakeEngine
from tests.polling import wait_for
from tests.queueadmin.conftest import LIMITS

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def control_channel():
    """A channel in the control group, to see what is broadcast."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.group_name(events.CONTROL), channel)

    async def receive():
        return await asyncio.wait_for(layer.receive(channel), 5)

    yield async_to_sync(receive)
    async_to_sync(layer.flush)()


def test_defaults_come_from_the_environment_until_saved(settings):
    """Before the first save, the values are the GENERATION_* settings."""
    settings.GENERATION_MAX_CONCURRENCY = 7
    settings.GENERATION_MAX_NEW_TOKENS = 99
    row = selectors.generation_settings_get()
    assert row._state.adding
    assert (row.max_concurrency, row.max_new_tokens) == (7, 99)
    assert selectors.generation_settings_saved() is None


def test_update_audits_and_broadcasts_after_commit(
    staff, control_channel, django_capture_on_commit_callbacks
):
    """A change is saved with a new version, audited old → new, and broadcast on commit."""
    with django_capture_on_commit_callbacks() as callbacks:
        row = services.generation_settings_update(
            user=staff, limits=Limits(**LIMITS).replace(max_concurrency=3)
        )
    assert len(callbacks) == 1  # nothing is sent before the commit
    for callback in callbacks:
        callback()
    message = control_channel()
    assert message == {
        "type": "settings.changed",
        "limits": {**LIMITS, "max_concurrency": 3},
        "version": row.version,
    }
    change = SettingsChange.objects.get()
    assert change.user == staff and change.username == "sam"
    assert change.changes == {"max_concurrency": {"old": 4, "new": 3}}
    assert change.summary() == "max_concurrency 4 → 3"

    with django_capture_on_commit_callbacks(execute=True):
        again = services.generation_settings_change(user=staff, max_concurrency=3)
    assert again.version == row.version  # no change, no new version, no audit entry
    assert SettingsChange.objects.count() == 1


@pytest.mark.parametrize("bad", ["0", "-1", "10000", "two"])
def test_console_form_rejects_bad_values(staff_client, bad):
    """0, negative, absurd and non-numeric caps get a form error; nothing is saved."""
    response = staff_client.post("/admin/queue/", {**LIMITS, "max_concurrency": bad})
    assert response.status_code == 400
    assert response.context["form"].errors["max_concurrency"]
    assert not GenerationSettings.objects.exists()


def test_console_form_saves_and_shows_the_change(
    staff_client, control_channel, django_capture_on_commit_callbacks
):
    """A valid post saves, broadcasts, redirects, and the change is listed."""
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/admin/queue/", {**LIMITS, "max_concurrency": 2, "queue_timeout_s": 60})
    assert response.status_code == 302
    assert control_channel()["limits"]["max_concurrency"] == 2
    page = staff_client.get("/admin/queue/").content.decode()
    assert "max_concurrency 4 → 2, queue_timeout_s 300 → 60" in page
    assert GenerationSettings.objects.get().updated_by.username == "sam"


def test_settings_admin_page_saves_through_the_service(
    client, django_user_model, control_channel, django_capture_on_commit_callbacks
):
    """The GenerationSettings admin page audits and broadcasts like the console."""
    admin = django_user_model.objects.create_superuser("root", password="pw-root-123")
    client.force_login(admin)
    add = client.get("/admin/queueadmin/generationsettings/add/")
    assert add.context["adminform"].form.initial["max_concurrency"] == 4  # the environment's
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/admin/queueadmin/generationsettings/add/", {**LIMITS, "max_new_tokens": 256})
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert control_channel()["limits"]["max_new_tokens"] == 256
    assert client.get("/admin/queueadmin/generationsettings/add/").status_code == 403  # one row only
    response = client.post("/admin/queueadmin/generationsettings/1/change/", {**LIMITS, "max_new_tokens": 0})
    assert response.status_code == 200  # the form again, with its error
    assert GenerationSettings.objects.get().max_new_tokens == 256
    assert SettingsChange.objects.get().changes == {"max_new_tokens": {"old": 512, "new": 256}}


def test_console_form_bounds_max_new_tokens_by_the_models_context(staff_client):
    """A reply budget that leaves the bundled model (8192 tokens of context) no
    room for the question is refused with the bound named, which the form's
    help text states beforehand."""
    page = staff_client.get("/admin/queue/").content.decode()
    assert "At most 4096 tokens: the model reads 8192 tokens in all" in page
    response = staff_client.post("/admin/queue/", {**LIMITS, "max_new_tokens": 8162})
    assert response.status_code == 400
    assert response.context["form"].errors["max_new_tokens"] == [
        "At most 4096 tokens: the model reads 8192 tokens in all, and half of them stay for the conversation."
    ]
    assert not GenerationSettings.objects.exists()
    assert staff_client.post("/admin/queue/", {**LIMITS, "max_new_tokens": 4096}).status_code == 302


def test_the_bound_follows_the_configured_model(staff, tiny_model_dir, settings):
    """A Hugging Face folder's config.json gives the context; the service
    refuses what the form would."""
    config = json.loads((tiny_model_dir / "config.json").read_text())
    folder = tiny_model_dir.parent / "short-context"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    settings.GENERATION_MODEL = str(folder)
    with pytest.raises(ValidationError, match="At most 512 tokens: the model reads 1024"):
        services.generation_settings_update(user=staff, limits=Limits(**LIMITS).replace(max_new_tokens=513))
    assert services.generation_settings_update(user=staff, limits=Limits(**LIMITS)).max_new_tokens == 512


def test_with_a_remote_engine_the_bound_follows_its_context_setting(staff_client, settings, monkeypatch):
    """With GENERATION_BACKEND=openai the bound is half the remote engine's
    context, not the local model's: GENERATION_OPENAI_CONTEXT_TOKENS when
    set; else, before the engine has answered, the 4096 the backend assumes."""
    settings.GENERATION_BACKEND = "openai"
    settings.GENERATION_OPENAI_CONTEXT_TOKENS = 1024
    assert (
        "At most 512 tokens: the model reads 1024 tokens"
        in staff_client.get("/admin/queue/").content.decode()
    )
    response = staff_client.post("/admin/queue/", {**LIMITS, "max_new_tokens": 513})
    assert (
        response.status_code == 400
        and "At most 512 tokens" in response.context["form"].errors["max_new_tokens"][0]
    )

    settings.GENERATION_OPENAI_CONTEXT_TOKENS = 0
    monkeypatch.setattr(registry, "_service", None)  # no service in this process has asked the engine
    assert (
        "At most 2048 tokens: the model reads 4096 tokens"
        in staff_client.get("/admin/queue/").content.decode()
    )


@pytest.mark.django_db(transaction=True)
async def test_with_a_remote_engine_the_bound_follows_the_context_it_reported(
    staff, settings, tiny_model_dir
):
    """Once this process's service has heard from the engine (vLLM's
    max_model_len, 2048 here), the console bounds the reply by that, even
    when GENERATION_OPENAI_CONTEXT_TOKENS says more than the engine holds."""
    engine = await FakeEngine().start()
    settings.GENERATION_BACKEND = "openai"
    settings.GENERATION_OPENAI_CONTEXT_TOKENS = 8192
    settings.GENERATION_OPENAI_BASE_URL = engine.base_url
    settings.GENERATION_OPENAI_TOKENIZER = str(tiny_model_dir)
    service = registry.get_service()
    try:
        await wait_for(lambda: service.model_state == "ready", timeout=30)
        client = AsyncClient()
        await client.aforce_login(staff)
        page = (await client.get("/admin/queue/")).content.decode()
        assert "At most 1024 tokens: the model reads 2048 tokens" in page
        response = await client.post("/admin/queue/", {**LIMITS, "max_new_tokens": 1025})
        assert response.status_code == 400
        assert (await client.post("/admin/queue/", {**LIMITS, "max_new_tokens": 1024})).status_code == 302
    finally:
        service.stop()
        await engine.stop()


def test_changing_the_limits_in_the_console_needs_the_admin_permission(client, watcher):
    """A staff member without "Can change generation settings" (which the
    admin's model page asks for) sees the limits read-only and cannot save
    them by posting the form: nothing is saved."""
    client.force_login(watcher)
    page = client.get("/admin/queue/")
    assert page.status_code == 200
    assert b"settings-read-only" in page.content and b"save-settings" not in page.content
    response = client.post("/admin/queue/", {**LIMITS, "max_concurrency": 2})
    assert response.status_code == 403
    assert not GenerationSettings.objects.exists()
