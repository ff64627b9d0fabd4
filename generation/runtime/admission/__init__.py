"""Admission: which generation requests may run, per process or site-wide.

- base.py: the `Admission` interface, its results (`Admitted`, `Waiting`,
  `Refused`, `Snapshot`) and the rules, including the one for a process
  that is locally full.
- local.py: `LocalAdmission`, in-process, the reference model.
- redis_backed.py and scripts.py: `RedisAdmission`, the same rules in Redis
  for every process of the site (issue #11), one Lua script per operation.

Nothing here imports Django. GenerationService uses a RedisAdmission
through generation.runtime.sitequeue when REDIS_URL is set; alone, it keeps
its own queue (LocalAdmission is the reference the property test checks
RedisAdmission against).
"""

from generation.runtime.admission.base import (
    DEFAULT_LEASE_S,
    Admission,
    Admitted,
    Enqueued,
    Refused,
    Snapshot,
    Waiting,
    counted_user,
)
from generation.runtime.admission.local import LocalAdmission
from generation.runtime.admission.redis_backed import DEFAULT_PREFIX, RedisAdmission

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_PREFIX",
    "Admission",
    "Admitted",
    "Enqueued",
    "LocalAdmission",
    "RedisAdmission",
    "Refused",
    "Snapshot",
    "Waiting",
    "counted_user",
]
