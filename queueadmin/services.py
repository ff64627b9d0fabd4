"""Writes of the queueadmin app: settings changes, statistics, pruning.

A settings change is audited and, once its transaction commits, broadcast
to every generation service over the channel layer; statistics arrive in
batches from each process's control (queueadmin.control).
"""

import datetime
import functools
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db import transaction

from generation.models import ApiKey, Conversation
from generation.runtime.types import Limits, RequestRecord
from queueadmin import events
from queueadmin.models import (
    GenerationRecord,
    GenerationSettings,
    PriorityClass,
    QueueSnapshot,
    SettingsChange,
)

logger = logging.getLogger(__name__)


def _broadcast_control(message: dict) -> None:
    """Send `message` to every process's control; called after commit."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(events.group_name(events.CONTROL), message)
    except Exception:
        # The row is saved: processes that miss the broadcast pick it up on restart.
        logger.exception("Could not broadcast %s", message["type"])


@transaction.atomic
def generation_settings_update(*, user, limits: Limits) -> GenerationSettings:
    """Save new limits, record who changed what, and broadcast them after commit.

    `limits` should already be validated (the forms do it), but the row is
    cleaned again so that no caller can store a cap of 0 (ValidationError).
    Saving unchanged values writes no audit entry.
    """
    values = limits.as_dict()
    row = GenerationSettings.objects.select_for_update().filter(pk=GenerationSettings.SINGLETON_PK).first()
    creating = row is None
    if creating:
        row = GenerationSettings(pk=GenerationSettings.SINGLETON_PK)
    changes = {}
    for name, new in values.items():
        old = getattr(row, name)
        if old != new:
            changes[name] = {"old": old, "new": new}
            setattr(row, name, new)
    if not changes and not creating:
        return row
    row.full_clean(exclude=["updated_by"])
    row.version += 1
    row.updated_by = user if user is not None and user.is_authenticated else None
    row.save()
    if changes:
        SettingsChange.objects.create(
            user=row.updated_by, username=user.get_username() if row.updated_by else "", changes=changes
        )
    message = events.settings_changed(limits=row.limits(), version=row.version)
    transaction.on_commit(functools.partial(_broadcast_control, message))
    return row


def _priority_changed(*, user, name: str, old: dict | None, new: dict | None) -> None:
    """Audit a priority class change as a settings change (a new version,
    so that every process's follower picks it up even if it misses the
    broadcast) and broadcast the new policy with the limits after commit."""
    from queueadmin.selectors import priority_policy_get

    row = GenerationSettings.objects.select_for_update().filter(pk=GenerationSettings.SINGLETON_PK).first()
    if row is None:
        row = GenerationSettings(pk=GenerationSettings.SINGLETON_PK)
    row.version += 1
    row.updated_by = user if user is not None and user.is_authenticated else None
    row.save()
    SettingsChange.objects.create(
        user=row.updated_by,
        username=user.get_username() if row.updated_by else "",
        changes={f"priority class {name}": {"old": old, "new": new}},
    )
    message = events.settings_changed(limits=row.limits(), version=row.version, policy=priority_policy_get())
    transaction.on_commit(functools.partial(_broadcast_control, message))


@transaction.atomic
def priority_class_set(
    *, user, name: str, rank: int, groups: list[str] = (), staff: bool = False, api: bool = False
) -> PriorityClass:
    """Create or update the priority class `name` (lower `rank` starts
    first; members: the Django `groups` named, staff if `staff`, API
    requests if `api`), audit it and apply it live in every process.
    ValidationError for a bad name or rank, or a group that does not exist.
    Saving it unchanged writes nothing."""
    from django.contrib.auth.models import Group
    from django.core.exceptions import ValidationError

    found = list(Group.objects.filter(name__in=groups))
    missing = sorted(set(groups) - {g.name for g in found})
    if missing:
        raise ValidationError(f"No such group: {', '.join(missing)}")
    row = PriorityClass.objects.select_for_update().filter(name=name).first()
    old = row.describe() if row is not None else None
    row = row or PriorityClass(name=name)
    row.rank, row.staff, row.api = rank, staff, api
    row.full_clean()
    row.save()
    row.groups.set(found)
    new = row.describe()
    if new != old:
        _priority_changed(user=user, name=name, old=old, new=new)
    return row


@transaction.atomic
def priority_class_delete(*, user, name: str) -> bool:
    """Delete the priority class `name`, audited and applied live; False
    when there was none."""
    row = PriorityClass.objects.select_for_update().filter(name=name).first()
    if row is None:
        return False
    old = row.describe()
    row.delete()
    _priority_changed(user=user, name=name, old=old, new=None)
    return True


def generation_settings_change(*, user, **changes) -> GenerationSettings:
    """Save the limits in force with some of them changed (keyword arguments
    named as Limits' fields; TypeError for another name), as
    `generation_settings_update` does. For scripts and benchmarks."""
    from queueadmin.selectors import generation_settings_get

    return generation_settings_update(user=user, limits=generation_settings_get().limits().replace(**changes))


def _timestamp(value: float | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromtimestamp(value, tz=datetime.UTC)


def _existing(model, ids: set[int]) -> set[int]:
    # Users, conversations and API keys may be deleted while their request
    # runs; a record then keeps its numbers and loses the link instead of failing.
    return set(model.objects.filter(pk__in=ids).values_list("pk", flat=True)) if ids else set()


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@transaction.atomic
def generation_records_create(*, records: list[RequestRecord]) -> list[GenerationRecord]:
    """Store a batch of service records (see GenerationService) in one insert."""
    user_ids = {_int_or_none(r.user_id) for r in records} - {None}
    conversation_ids = {_int_or_none(r.meta.get("conversation")) for r in records} - {None}
    users = _existing(get_user_model(), user_ids)
    conversations = _existing(Conversation, conversation_ids)
    api_keys = _existing(ApiKey, {_int_or_none(r.api_key_id) for r in records} - {None})
    rows = []
    for record in records:
        user_id = _int_or_none(record.user_id)
        conversation_id = _int_or_none(record.meta.get("conversation"))
        api_key_id = _int_or_none(record.api_key_id)
        rows.append(
            GenerationRecord(
                request_id=record.request_id,
                user_id=user_id if user_id in users else None,
                conversation_id=conversation_id if conversation_id in conversations else None,
                source=record.source,
                api_key_id=api_key_id if api_key_id in api_keys else None,
                worker=record.worker[:128],
                enqueued_at=_timestamp(record.enqueued_at),
                started_at=_timestamp(record.started_at),
                first_token_at=_timestamp(record.first_token_at),
                finished_at=_timestamp(record.finished_at),
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                max_new_tokens=record.max_new_tokens,
                budget_shrunk=record.budget_shrunk,
                outcome=record.outcome,
                priority_class=record.priority_class[:40],
                finish_reason=record.finish_reason or "",
                error_code=record.error_code or "",
            )
        )
    return GenerationRecord.objects.bulk_create(rows)


@transaction.atomic
def queue_snapshots_create(*, snapshots: list[dict]) -> list[QueueSnapshot]:
    """Store a batch of snapshots: dicts of worker, taken (epoch), running,
    waiting, cap, tokens and interval_s."""
    rows = [
        QueueSnapshot(
            **{**snapshot, "worker": snapshot["worker"][:128], "taken": _timestamp(snapshot["taken"])}
        )
        for snapshot in snapshots
    ]
    return QueueSnapshot.objects.bulk_create(rows)


@transaction.atomic
def stats_batch_create(*, records: list[RequestRecord], snapshots: list[dict]) -> None:
    """Store one flush of a process's statistics in a single transaction."""
    if records:
        generation_records_create(records=records)
    if snapshots:
        queue_snapshots_create(snapshots=snapshots)


@transaction.atomic
def stats_prune(*, before: datetime.datetime) -> dict[str, int]:
    """Delete records enqueued and snapshots taken before `before`; return the counts."""
    records, _ = GenerationRecord.objects.filter(enqueued_at__lt=before).delete()
    snapshots, _ = QueueSnapshot.objects.filter(taken__lt=before).delete()
    return {"records": records, "snapshots": snapshots}
