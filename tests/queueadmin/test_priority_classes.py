"""Priority classes set by staff (issue #15): the command, the audit trail,
the broadcast, and a running service that applies them live."""

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from generation.runtime.types import RequestSource
from queueadmin import events, selectors, services
from queueadmin.models import SettingsChange
from tests.polling import wait_for
from tests.queueadmin.conftest import LONG
from tests.queueadmin.test_settings import control_channel  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("priority_class", *args, stdout=out)
    return out.getvalue()


def test_without_classes_nothing_changes():
    """No class defined: the policy is empty (first come, first served) and
    `list` says so."""
    assert not selectors.priority_policy_get()
    assert "first come, first served" in run("list")


def test_the_command_sets_lists_and_deletes_classes_audited(django_user_model, staff):
    """`set` creates and updates, `list` shows best first, `delete` removes;
    every change is in the settings' trail and resolves members from their
    groups and staff status."""
    support = Group.objects.create(name="support")
    agent = django_user_model.objects.create_user(username="ann", password="pw-ann-123")
    agent.groups.add(support)
    run("set", "support", "--rank", "1", "--group", "support", "--staff")
    run("set", "batch", "--rank", "9", "--api")
    run("set", "batch", "--rank", "8", "--api")
    assert run("list").splitlines() == [
        "support: rank 1; group support, staff",
        "batch: rank 8; API requests",
    ]
    policy = selectors.priority_policy_get()
    assert policy.class_of(str(agent.pk), RequestSource.CHAT) == ("support", 1)
    assert policy.class_of(str(staff.pk), RequestSource.API) == ("support", 1)
    assert policy.class_of("424242", RequestSource.API) == ("batch", 8)
    assert policy.class_of("424242", RequestSource.CHAT) == ("default", 100)
    run("set", "batch", "--rank", "8", "--api")  # unchanged: no new entry
    run("delete", "batch")
    trail = [change.summary() for change in SettingsChange.objects.order_by("id")]
    assert len(trail) == 4
    assert "priority class batch" in trail[2] and "'rank': 9" in trail[2] and "'rank': 8" in trail[2]
    assert trail[3].endswith("→ None")
    assert [c.name for c in selectors.priority_classes_list()] == ["support"]
    with pytest.raises(CommandError, match="No such group: nobody"):
        run("set", "x", "--rank", "2", "--group", "nobody")
    with pytest.raises(CommandError, match="No priority class"):
        run("delete", "batch")


def test_a_change_is_broadcast_with_the_policy_after_commit(
    control_channel,  # noqa: F811
    django_capture_on_commit_callbacks,
):
    """The broadcast carries the limits, a new version and the whole policy."""
    with django_capture_on_commit_callbacks(execute=True):
        services.priority_class_set(user=None, name="batch", rank=5, api=True)
    message = control_channel()
    assert message["type"] == events.SETTINGS_CHANGED and message["version"] == 1
    policy = events.settings_changed_policy(message)
    assert [(c.name, c.rank, c.api) for c in policy.classes] == [("batch", 5, True)]


@pytest.mark.django_db(transaction=True)
async def test_a_class_set_by_command_applies_live_to_waiting_requests(settings, live):
    """Cap 1, an API request waits ahead of a chat request; `priority_class
    set batch --api` with a worse rank than the default puts the chat
    request first at once, and the API one is told it moved back."""
    settings.GENERATION_MAX_CONCURRENCY = 1
    await database_sync_to_async(services.generation_settings_change)(user=None, max_concurrency=1)
    await wait_for(lambda: live.limits.max_concurrency == 1, timeout=5)
    running = live.submit(user_id=201, messages=LONG)
    api = live.submit(user_id=202, messages=LONG, source=RequestSource.API)
    chat = live.submit(user_id=203, messages=LONG)
    assert [r.id for r in live.waiting_in_order()] == [api.id, chat.id]
    await database_sync_to_async(run)("set", "batch", "--rank", "500", "--api")
    await wait_for(lambda: [r.id for r in live.waiting_in_order()] == [chat.id, api.id], timeout=5)
    assert api.request.position == (2, 2)
    for handle in (running, api, chat):
        handle.cancel()


def test_the_admin_page_saves_and_deletes_through_the_service(admin_client):
    """Adding a class in the admin audits it like the command; the console
    lists it; deleting it there is audited too."""
    Group.objects.create(name="support")
    group = Group.objects.get(name="support")
    response = admin_client.post(
        "/admin/queueadmin/priorityclass/add/",
        {"name": "support", "rank": 2, "groups": [group.pk], "staff": "on"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert run("list").splitlines() == ["support: rank 2; group support, staff"]
    assert "priority class support" in SettingsChange.objects.get().summary()
    page = admin_client.get("/admin/queue/").content.decode()
    assert "<td>support</td>" in page and "Edit the priority classes" in page
    row = selectors.priority_classes_list()[0]
    response = admin_client.post(f"/admin/queueadmin/priorityclass/{row.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not selectors.priority_classes_list()
    assert SettingsChange.objects.count() == 2


def test_the_console_shows_each_class_queue_wait_over_the_last_hour(admin_client):
    """Records keep their request's class; the console shows per class the
    p50 / p95 of the queue wait of the last hour."""
    import time

    from generation.runtime.types import Outcome, RequestRecord

    run("set", "support", "--rank", "1", "--staff")
    # Whole seconds: the waits below then land on whole microseconds when
    # stored, so that 0.1 s reads back as exactly 100 ms (not 99.999).
    now = float(int(time.time()))
    records = [
        RequestRecord(
            request_id=f"r{i}",
            worker="w",
            user_id="cli",
            meta={},
            enqueued_at=now - 10,
            started_at=now - 10 + wait,
            first_token_at=None,
            finished_at=now,
            prompt_tokens=1,
            completion_tokens=1,
            max_new_tokens=8,
            budget_shrunk=False,
            outcome=Outcome.COMPLETED,
            priority_class=name,
        )
        for i, (name, wait) in enumerate([("support", 0.1), ("support", 0.3), ("default", 5.0)])
    ]
    services.generation_records_create(records=records)
    waits = selectors.queue_waits_by_class(since=now - 3600)
    assert waits["support"] == {"p50": 100, "p95": 300, "count": 2}
    assert waits["default"]["count"] == 1
    page = admin_client.get("/admin/queue/").content.decode()
    assert "100 / 300 ms (2)" in page
