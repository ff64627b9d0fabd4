"""Live generation settings, their audit trail, and the queue's statistics.

`GenerationSettings` is a single row (pk 1) that overrides the limits from
the environment once staff first save it. `GenerationRecord` is one finished
request; `QueueSnapshot` is one process's queue every few seconds while it is
busy. Records and snapshots are written in batches by queueadmin.control.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from generation.runtime.context import backend_context_tokens, reply_budget_bound
from generation.runtime.types import Limits

# Bounds for the live limits. The upper ones only catch typing mistakes (an
# extra zero); they are far above what one process can usefully run.
LIMIT_BOUNDS = {
    "max_concurrency": (1, 256),
    "max_queue_size": (1, 1000),
    "max_active_per_user": (1, 100),
    "max_active_api_per_user": (1, 100),
    "queue_timeout_s": (1, 3600),
    # The real bound is half the configured model's context (clean());
    # this one only catches an extra zero for models of up to 1M tokens.
    "max_new_tokens": (1, 524_288),
}
LIMIT_FIELDS = Limits.FIELDS
assert set(LIMIT_BOUNDS) == set(LIMIT_FIELDS), "every limit needs its bounds"


def _bounded(name: str) -> list:
    low, high = LIMIT_BOUNDS[name]
    return [MinValueValidator(low), MaxValueValidator(high)]


# Callable defaults, so that an unsaved row shows the environment's values.
def default_max_concurrency() -> int:
    """GENERATION_MAX_CONCURRENCY, the cap until the row is first saved."""
    return settings.GENERATION_MAX_CONCURRENCY


def default_max_queue_size() -> int:
    """GENERATION_MAX_QUEUE, the queue length until the row is first saved."""
    return settings.GENERATION_MAX_QUEUE


def default_max_active_per_user() -> int:
    """GENERATION_MAX_ACTIVE_PER_USER, until the row is first saved."""
    return settings.GENERATION_MAX_ACTIVE_PER_USER


def default_max_active_api_per_user() -> int:
    """GENERATION_MAX_ACTIVE_API_PER_USER, until the row is first saved."""
    return settings.GENERATION_MAX_ACTIVE_API_PER_USER


def default_queue_timeout_s() -> int:
    """GENERATION_QUEUE_TIMEOUT_S, until the row is first saved."""
    return settings.GENERATION_QUEUE_TIMEOUT_S


def default_max_new_tokens() -> int:
    """GENERATION_MAX_NEW_TOKENS, until the row is first saved."""
    return settings.GENERATION_MAX_NEW_TOKENS


class GenerationSettings(models.Model):
    """The limits every generation service applies, changed live by staff.

    There is at most one row, pk 1; write it only through
    `queueadmin.services.generation_settings_update`, which audits the
    change and broadcasts it to every process after commit. `version` grows
    by one per change, so a process never applies an older value over a
    newer one that reached it first.
    """

    SINGLETON_PK = 1

    max_concurrency = models.PositiveIntegerField(
        default=default_max_concurrency,
        validators=_bounded("max_concurrency"),
        help_text=_("Replies generated at once, per server process."),
    )
    max_queue_size = models.PositiveIntegerField(
        default=default_max_queue_size,
        validators=_bounded("max_queue_size"),
        help_text=_("Requests that may wait, per process; one more is refused as queue_full."),
    )
    max_active_per_user = models.PositiveIntegerField(
        default=default_max_active_per_user,
        validators=_bounded("max_active_per_user"),
        help_text=_("Chat replies one user may have queued or running."),
    )
    max_active_api_per_user = models.PositiveIntegerField(
        "max active API requests per user",
        default=default_max_active_api_per_user,
        validators=_bounded("max_active_api_per_user"),
        help_text=_(
            "API requests one user may have queued or running (all their keys together), "
            "counted apart from their chat replies."
        ),
    )
    queue_timeout_s = models.PositiveIntegerField(
        "queue timeout (s)",
        default=default_queue_timeout_s,
        validators=_bounded("queue_timeout_s"),
        help_text=_("Longest wait in the queue, in seconds."),
    )
    max_new_tokens = models.PositiveIntegerField(
        default=default_max_new_tokens,
        validators=_bounded("max_new_tokens"),
        help_text=_(
            "Longest reply, in tokens; at most half the model's context, so a question always has room."
        ),
    )
    version = models.PositiveIntegerField(default=0, editable=False)
    updated = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "generation settings"
        verbose_name_plural = "generation settings"

    def __str__(self) -> str:
        return "Generation settings"

    def clean(self) -> None:
        """Check the limits against each other and the model that generates:
        the reply's budget may take at most half of its context (the remote
        engine's with GENERATION_BACKEND=openai; `backend_context_tokens`)."""
        super().clean()
        context = backend_context_tokens()
        if context and self.max_new_tokens is not None and self.max_new_tokens > reply_budget_bound(context):
            raise ValidationError({"max_new_tokens": max_new_tokens_bound_text(context)})

    def limits(self) -> Limits:
        """The row's limits as one value, as `GenerationService.update_limits` takes them."""
        return Limits(**{name: getattr(self, name) for name in LIMIT_FIELDS})


def max_new_tokens_bound_text(context: int) -> str:
    """The bound on max_new_tokens for forms and errors, in words."""
    from django.utils.translation import gettext

    return gettext(
        "At most %(bound)s tokens: the model reads %(context)s tokens in all, "
        "and half of them stay for the conversation."
    ) % {"bound": reply_budget_bound(context), "context": context}


class PriorityClass(models.Model):
    """A class of generation requests that starts before worse ones (issue
    #15): lower `rank` first. A person's request takes the best class they
    belong to: through one of `groups`, being staff (`staff`), or, for
    requests through the API, `api`. A class named "default" holds everyone
    in no other class (without one, they rank 100). Written through
    queueadmin.services (audited, applied live)."""

    name = models.SlugField(max_length=40, unique=True)
    rank = models.PositiveIntegerField(
        validators=[MaxValueValidator(10_000)], help_text="Lower starts first."
    )
    groups = models.ManyToManyField("auth.Group", blank=True, related_name="+")
    staff = models.BooleanField(default=False, help_text="Staff members belong to this class.")
    api = models.BooleanField(default=False, help_text="Requests through the API belong to this class.")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["rank", "name"]
        verbose_name_plural = "priority classes"

    def __str__(self) -> str:
        return f"{self.name} (rank {self.rank})"

    def describe(self) -> dict:
        """JSON-safe: what the class is, for the audit trail and the console."""
        return {
            "rank": self.rank,
            "groups": sorted(g.name for g in self.groups.all()),
            "staff": self.staff,
            "api": self.api,
        }


class SettingsChange(models.Model):
    """One saved change of the generation settings: who, when, old → new."""

    changed = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept apart from `user` so the trail survives the account's deletion.
    username = models.CharField(max_length=150, blank=True)
    changes = models.JSONField(help_text='{"field": {"old": value, "new": value}}')

    class Meta:
        ordering = ["-changed", "-id"]

    def __str__(self) -> str:
        return f"{self.username or 'system'} at {self.changed:%Y-%m-%d %H:%M:%S}"

    def summary(self) -> str:
        """The change in one line, e.g. "max_concurrency 1 → 3"."""
        return ", ".join(f"{name} {diff['old']} → {diff['new']}" for name, diff in self.changes.items())


class GenerationRecord(models.Model):
    """One generation request, written once it has ended (rejected ones too).
    `source` says whether the browser chat or the API sent it, and `api_key`
    with which key (kept as a link: a revoked key stays; a deleted one, or
    its owner's deletion, leaves the record without it)."""

    class Source(models.TextChoices):
        CHAT = "chat"
        API = "api", "API"

    class Outcome(models.TextChoices):
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        REJECTED = "rejected"
        TIMEOUT = "timeout"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    request_id = models.CharField(max_length=64, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    conversation = models.ForeignKey(
        "generation.Conversation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.CHAT, db_index=True)
    api_key = models.ForeignKey(
        "generation.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    worker = models.CharField(max_length=128, db_index=True)
    enqueued_at = models.DateTimeField(db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    max_new_tokens = models.PositiveIntegerField(
        default=0, help_text="The reply's token budget in effect; 0 if it never started."
    )
    budget_shrunk = models.BooleanField(
        default=False,
        help_text="The newest message left less room in the context than max_new_tokens asked for.",
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    priority_class = models.CharField(
        max_length=40, blank=True, help_text="Its priority class when it arrived; empty without classes."
    )
    finish_reason = models.CharField(max_length=16, blank=True)
    error_code = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-enqueued_at", "-id"]
        indexes = [models.Index(fields=["outcome", "enqueued_at"], name="record_outcome_enqueued")]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.outcome})"

    def queue_wait_ms(self) -> int | None:
        """Milliseconds from enqueueing to the start, or None if it never started."""
        return _ms(self.enqueued_at, self.started_at)

    def ttft_ms(self) -> int | None:
        """Milliseconds from enqueueing to the first token, or None."""
        return _ms(self.enqueued_at, self.first_token_at)


def _ms(start, end) -> int | None:
    return None if start is None or end is None else round((end - start).total_seconds() * 1000)


class QueueSnapshot(models.Model):
    """One process's queue at one moment, taken every few seconds while busy."""

    worker = models.CharField(max_length=128)
    taken = models.DateTimeField(db_index=True)
    running = models.PositiveIntegerField()
    waiting = models.PositiveIntegerField()
    cap = models.PositiveIntegerField()
    tokens = models.PositiveIntegerField(help_text="Tokens generated since the previous snapshot.")
    interval_s = models.FloatField(help_text="Seconds since the previous snapshot.")

    class Meta:
        ordering = ["-taken", "-id"]

    def __str__(self) -> str:
        return f"{self.worker} at {self.taken:%H:%M:%S}"
