"""Channel-layer messages between server processes and the console.

Every generation service's control (queueadmin.control) joins two groups:
`control`, where settings changes and console cancels are broadcast, and
`status`, where each process publishes its queue about twice a second so
that every process knows the whole cluster. Messages are plain JSON-safe
dicts with dotted `type` names; group names come from `group_name` only.
"""

from generation.runtime.admission.order import PriorityPolicy
from generation.runtime.types import Limits

CONTROL = "control"
STATUS = "status"

SETTINGS_CHANGED = "settings.changed"
REQUEST_CANCEL = "request.cancel"
WORKER_STATUS = "worker.status"
CONSOLE_STATUS = "queue.status"


def group_name(kind: str) -> str:
    """The channel-layer group for `kind` (CONTROL or STATUS)."""
    if kind not in (CONTROL, STATUS):
        raise ValueError(f"Unknown group {kind!r}")
    return f"queueadmin.{kind}"


def settings_changed(*, limits: Limits, version: int, policy: PriorityPolicy | None = None) -> dict:
    """Tell every process to apply `limits` (unless it already has a newer
    version); they travel as JSON (`Limits.as_dict`), read back by
    `settings_changed_limits`. A priority class change adds the whole
    `policy` (`PriorityPolicy.as_dict`, read back by `settings_changed_policy`)."""
    message = {"type": SETTINGS_CHANGED, "limits": limits.as_dict(), "version": version}
    if policy is not None:
        message["priority"] = policy.as_dict()
    return message


def settings_changed_policy(message: dict) -> PriorityPolicy | None:
    """The priority policy of a `settings.changed` message, None when it
    carries none (a change of the limits only)."""
    data = message.get("priority")
    return None if data is None else PriorityPolicy.from_dict(data)


def settings_changed_limits(message: dict, *, base: Limits) -> Limits:
    """The limits of a `settings.changed` message; missing ones keep `base`'s."""
    return Limits.from_dict(message["limits"], base=base)


def request_cancel(*, request_id: str, by: str) -> dict:
    """Ask every process to cancel `request_id`; only its owner knows it, the
    others ignore it (the service ignores unknown ids)."""
    return {"type": REQUEST_CANCEL, "request": request_id, "by": by}


def worker_status(status: dict) -> dict:
    """One process's published status (see control.Control.status)."""
    return {"type": WORKER_STATUS, "status": status}
