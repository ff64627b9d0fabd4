"""Reads of the queueadmin app: settings, their history, and the console's view.

`console_payload` turns the statuses that the processes publish into what
the console's WebSocket and status.json send; it reads memory only.
"""

import datetime
import time

from django.conf import settings
from django.contrib.auth import get_user_model

from generation.runtime.admission.order import PriorityClass as RuntimeClass
from generation.runtime.admission.order import PriorityPolicy
from generation.runtime.service import OWN_QUEUE
from generation.runtime.types import Limits, RequestSource
from generation.stats import summarize
from queueadmin import events
from queueadmin.models import (
    GenerationRecord,
    GenerationSettings,
    PriorityClass,
    QueueSnapshot,
    SettingsChange,
)


def generation_settings_get() -> GenerationSettings:
    """The settings row, or an unsaved one holding the environment's defaults."""
    row = GenerationSettings.objects.filter(pk=GenerationSettings.SINGLETON_PK).first()
    return row or GenerationSettings(pk=GenerationSettings.SINGLETON_PK)


def generation_settings_saved() -> tuple[Limits, int] | None:
    """(limits, version) of the saved row, or None before it is first saved."""
    row = GenerationSettings.objects.filter(pk=GenerationSettings.SINGLETON_PK).first()
    return None if row is None else (row.limits(), row.version)


def priority_classes_list() -> list[PriorityClass]:
    """The priority classes, best first, with their groups."""
    return list(PriorityClass.objects.prefetch_related("groups"))


def priority_policy_get() -> PriorityPolicy:
    """The priority classes as the runtime applies them: each with the ids
    of its members resolved now (its groups' members, and the active staff
    when it counts staff), and GENERATION_PRIORITY_AGEING_S. Empty (falsy)
    when staff defined no class: first come, first served."""
    users = get_user_model().objects
    classes = []
    for row in priority_classes_list():
        members = set(users.filter(groups__in=row.groups.all()).values_list("pk", flat=True))
        if row.staff:
            members |= set(users.filter(is_staff=True, is_active=True).values_list("pk", flat=True))
        classes.append(
            RuntimeClass(
                name=row.name, rank=row.rank, users=frozenset(str(pk) for pk in members), api=row.api
            )
        )
    return PriorityPolicy(classes=tuple(classes), ageing_s=settings.GENERATION_PRIORITY_AGEING_S)


def queue_waits_by_class(*, since: float) -> dict[str, dict]:
    """{priority class: {"p50", "p95", "count"}} of the queue waits (ms,
    enqueue to start) of the requests that arrived after `since` (epoch
    seconds) and started; requests from before any class was defined count
    under "". Best class first is the caller's business."""
    start = datetime.datetime.fromtimestamp(since, tz=datetime.UTC)
    rows = GenerationRecord.objects.filter(enqueued_at__gte=start, started_at__isnull=False).values_list(
        "priority_class", "enqueued_at", "started_at"
    )
    waits: dict[str, list[float]] = {}
    for name, enqueued, started in rows:
        waits.setdefault(name, []).append((started - enqueued).total_seconds() * 1000)
    return {name: summarize(values) for name, values in waits.items()}


def settings_changes_recent(*, limit: int = 20) -> list[SettingsChange]:
    """The latest settings changes, newest first."""
    return list(SettingsChange.objects.select_related("user")[:limit])


def run_times_recent(*, before: float, limit: int = 20) -> list[float]:
    """Seconds from start to end of the site's last `limit` completed replies
    that finished before `before` (epoch seconds), oldest first: what a
    starting service's start estimates begin with (generation.runtime.eta)."""
    rows = (
        GenerationRecord.objects.filter(
            outcome=GenerationRecord.Outcome.COMPLETED,
            started_at__isnull=False,
            finished_at__lt=datetime.datetime.fromtimestamp(before, tz=datetime.UTC),
        )
        .order_by("-enqueued_at")
        .values_list("started_at", "finished_at")[:limit]
    )
    return [(finished - started).total_seconds() for started, finished in list(rows)[::-1]]


def admission_ms_by_request(*, request_ids: list[str]) -> dict[str, float]:
    """{request id: milliseconds from submit to start} of the records of
    `request_ids` that started, as the service stamped them (to the
    microsecond, unlike the whole milliseconds of `queue_ms`). A request whose
    record is not written yet (records are flushed about every second) or
    that never started is missing."""
    rows = GenerationRecord.objects.filter(request_id__in=request_ids, started_at__isnull=False)
    return {
        request_id: (started - enqueued).total_seconds() * 1000
        for request_id, enqueued, started in rows.values_list("request_id", "enqueued_at", "started_at")
    }


def snapshot_series(*, since: float, bucket_s: int = 5) -> dict:
    """Running, waiting and tokens/s of all processes since `since` (epoch s),
    summed per `bucket_s`-second bucket, oldest first, for the console's chart."""
    start = datetime.datetime.fromtimestamp(since, tz=datetime.UTC)
    rows = (
        QueueSnapshot.objects.filter(taken__gte=start)
        .values("taken", "running", "waiting", "tokens", "interval_s")
        .order_by("taken")
    )
    buckets: dict[int, list[float]] = {}
    for row in rows:
        key = int(row["taken"].timestamp() // bucket_s * bucket_s)
        bucket = buckets.setdefault(key, [0, 0, 0.0])
        bucket[0] += row["running"]
        bucket[1] += row["waiting"]
        bucket[2] += row["tokens"] / row["interval_s"] if row["interval_s"] > 0 else 0
    keys = sorted(buckets)
    return {
        "time": keys,
        "running": [buckets[k][0] for k in keys],
        "waiting": [buckets[k][1] for k in keys],
        "tokens_per_s": [round(buckets[k][2], 2) for k in keys],
    }


def _request_row(worker: str, item: dict) -> dict:
    meta = item.get("meta") or {}
    row = {
        "request": item["request"],
        "worker": worker,
        "user": meta.get("user") or item.get("user"),
        # A process from before issue #12 sends no source: all its requests are chats.
        "source": item.get("source") or str(RequestSource.CHAT),
        "conversation": meta.get("conversation"),
        "since": item.get("since"),
    }
    if item.get("class"):
        row["class"] = item["class"]  # its priority class (issue #15)
    if "tokens" in item:
        row["tokens"] = item["tokens"]
    if "position" in item:
        row["position"] = item["position"]
        row["eta_s"] = item.get("eta_s")  # None: unknown (model loading, too few replies)
    return row


# A process that publishes no `admission` (one started before issue #11,
# during a rolling deploy) admits by its own queue and cap: OWN_QUEUE.
FALLBACK_WARNING = "Redis cannot be reached: limits apply per process until it is back."


def console_payload(statuses: list[dict], *, local_worker: str | None = None, saved_version: int = 0) -> dict:
    """The console's view of every process and of all together.

    `statuses` are the processes' published statuses (control.Control.status).
    `saved_version` is the newest settings version the caller knows to be
    saved; `settings_version` is the newer of it and every process's, and a
    worker whose own version is older is `behind` (it has not applied the
    latest save yet). Version 0 means the environment's defaults.
    Each worker's latencies are its own; the totals' are computed over all
    processes' samples. Times are epoch seconds; `time` is the server's now,
    so a browser can show "waited 12 s" without trusting its own clock.

    Each worker says how it admits (`admission`, as its service reports it:
    `scope` "site" or "process", `fallback`, `error`), its `cap` (the limits'
    max_concurrency: the site's while its scope is "site"),
    `process_max_concurrency` (its own engine's bound, 0 = the cap alone) and
    `bound` (the most it runs at once: the smaller of the two). The top-level
    `admission` sums them up (see `admission_summary`); `total` counts each
    request once (see `_total`), and `total.by_source` splits the running and
    waiting counts between the chat and the API. Each running and waiting row
    says its `source`; each waiting row its `position` and `eta_s` (as the
    person's `queued` frame has it: seconds until it starts, or None). While
    a worker's model loads, its `model.state` is "loading".
    """
    workers, running, waiting = [], [], []
    samples = {"ttft_ms": [], "queue_wait_ms": []}
    saved_version = max([saved_version, *(status.get("settings_version", 0) for status in statuses)])
    for status in statuses:
        # Statuses are JSON (other processes publish them over the channel layer).
        name, limits = status["worker"], Limits.from_dict(status["limits"])
        own = status.get("process_max_concurrency", 0)
        workers.append(
            {
                "worker": name,
                "local": name == local_worker,
                "model": status["model"],
                "limits": limits.as_dict(),
                "admission": status.get("admission", OWN_QUEUE),
                "running": len(status["running"]),
                "cap": limits.max_concurrency,
                "process_max_concurrency": own,
                "bound": min(limits.max_concurrency, own) if own else limits.max_concurrency,
                "waiting": len(status["waiting"]),
                "max_queue": limits.max_queue_size,
                "tokens_per_s": status["tokens_per_s"],
                "latency": status["latency"],
                "published": status["published"],
                "settings_version": status.get("settings_version", 0),
                "behind": status.get("settings_version", 0) < saved_version,
            }
        )
        running += [_request_row(name, item) for item in status["running"]]
        waiting += [_request_row(name, item) for item in status["waiting"]]
        for key, values in status["samples"].items():
            samples[key] += values
    # In start order: a process's positions are its start order (priority
    # classes, issue #15), or the site's with the site queue.
    waiting.sort(key=lambda row: (row.get("position") or 0, row["since"] or 0))
    return {
        "type": events.CONSOLE_STATUS,
        "time": time.time(),
        "settings_version": saved_version,
        "admission": admission_summary(workers),
        "workers": workers,
        "total": {
            **_total(workers),
            "by_source": _by_source(running, waiting),
            "latency": {key: summarize(values) for key, values in samples.items()},
        },
        "running": sorted(running, key=lambda row: row["since"] or 0),
        "waiting": waiting,
    }


def _by_source(running: list[dict], waiting: list[dict]) -> dict[str, dict[str, int]]:
    """{source: {"running": n, "waiting": n}} for every RequestSource: the
    browser chat's and the API's traffic apart."""
    return {
        str(source): {
            "running": sum(1 for row in running if row["source"] == source),
            "waiting": sum(1 for row in waiting if row["source"] == source),
        }
        for source in RequestSource
    }


def admission_summary(workers: list[dict]) -> dict:
    """How the limits apply across `workers` (console_payload's rows).

    `scope` is "site" when every process admits through the site queue,
    "process" when none does (no Redis, or all fell back), else "mixed".
    `fallback` names the processes that have a site queue but cannot reach
    Redis, and `message` is then the console's warning (empty otherwise);
    each worker's own `admission.error` says why. Staff only: an error may
    name Redis's host.
    """
    scopes = {w["admission"].get("scope", "process") for w in workers}
    fallback = [w["worker"] for w in workers if w["admission"].get("fallback")]
    return {
        "scope": scopes.pop() if len(scopes) == 1 else ("mixed" if scopes else "process"),
        "fallback": fallback,
        "message": FALLBACK_WARNING if fallback else "",
    }


def _total(workers: list[dict]) -> dict:
    """The headline numbers. Each request runs or waits in exactly one
    process, so running and waiting are sums. The caps are not: processes
    admitting through the site queue share one cap and one queue (the
    site's, from the newest settings any of them runs), bounded also by the
    sum of their own bounds; a process on its own queue (no Redis, or fallen
    back) adds its own. So `cap` is the most that can run at once right now,
    and `site_cap` the site's cap (None without a site queue)."""
    site = [w for w in workers if w["admission"].get("scope") == "site"]
    alone = [w for w in workers if w["admission"].get("scope") != "site"]
    newest = max(site, key=lambda w: w["settings_version"], default=None)
    site_cap = newest["cap"] if newest else None
    return {
        "workers": len(workers),
        "running": sum(w["running"] for w in workers),
        "cap": (min(site_cap, sum(w["bound"] for w in site)) if site else 0) + sum(w["bound"] for w in alone),
        "site_cap": site_cap,
        "waiting": sum(w["waiting"] for w in workers),
        "max_queue": (newest["max_queue"] if newest else 0) + sum(w["max_queue"] for w in alone),
        "tokens_per_s": round(sum(w["tokens_per_s"] for w in workers), 2),
    }
