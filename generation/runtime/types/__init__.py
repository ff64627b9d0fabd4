"""The types that cross the generation runtime's seams; import them from here.

Three boundaries, each typed in one module of this package and nowhere else:

- backend → service: `Report`s (reports.py). A backend (the in-process
  model thread, or a remote OpenAI-compatible engine) says it is ready or
  failed, and per request that it started, produced text, finished, failed,
  or must wait because the engine is busy. Modelled on vLLM's
  `EngineCoreOutput` / `FinishReason` (vllm/v1/engine/__init__.py).
- service → consumers: `Event`s (events.py), one stream per request, ending
  with `Done` or `Error`. Each has a `type` and a JSON-safe `as_dict()`.
- service → statistics: one `RequestRecord` per finished request
  (records.py), built by `RequestRecord.of` and nowhere else.

Plus the values that travel between them (values.py): `Limits` (the live
knobs, from the console form to the scheduler as one value), `ModelState`,
`RequestState`, `RequestSource`, `Outcome`, `FinishReason`, `ErrorCode` with `ERROR_TEXT`
(the one place that words the codes), `BackendInfo`, `Usage` and `Timings`.
Nothing here imports Django or torch.
"""

from generation.runtime.types.events import Done, Error, Event, Queued, Started, Token
from generation.runtime.types.records import RequestRecord
from generation.runtime.types.reports import (
    BackendFailed,
    BackendReady,
    Report,
    RequestDeferred,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    TextDelta,
)
from generation.runtime.types.values import (
    ERROR_TEXT,
    BackendInfo,
    ErrorCode,
    FinishReason,
    Limits,
    ModelState,
    Outcome,
    RequestSource,
    RequestState,
    Timings,
    Usage,
)

__all__ = [
    "ERROR_TEXT",
    "BackendFailed",
    "BackendInfo",
    "BackendReady",
    "Done",
    "Error",
    "ErrorCode",
    "Event",
    "FinishReason",
    "Limits",
    "ModelState",
    "Outcome",
    "Queued",
    "Report",
    "RequestDeferred",
    "RequestFailed",
    "RequestFinished",
    "RequestRecord",
    "RequestSource",
    "RequestStarted",
    "RequestState",
    "Started",
    "TextDelta",
    "Timings",
    "Token",
    "Usage",
]
