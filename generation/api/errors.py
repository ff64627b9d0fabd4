"""Errors of the OpenAI-compatible API, in OpenAI's shape.

Every refusal of /v1/ is an `ApiError`: the HTTP status, and the body
`{"error": {"message", "type", "param", "code"}}` that the `openai` SDK and
other clients read (the SDK picks its exception class from the status:
400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError, 5xx InternalServerError). `for_service_error` words the
generation service's error codes for clients: overload is 503 or 429 with
a `Retry-After` the SDK honours (at most 120 s, the longest it waits).
"""

from __future__ import annotations

from generation.runtime.types import ErrorCode

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "requests"  # OpenAI's type for a limit on requests (vs. tokens)

# Seconds a client is told to wait before trying again (Retry-After). The
# SDK retries after exactly this long, up to 120 s; kept short because a
# slot or a place in the queue usually frees within seconds.
RETRY_AFTER_BUSY_S = 2
RETRY_AFTER_QUEUE_FULL_S = 10
RETRY_AFTER_QUEUE_TIMEOUT_S = 10
RETRY_AFTER_UNAVAILABLE_S = 10
RETRY_AFTER_LEASE_LOST_S = 1

CANCELLED_TEXT = "The request was cancelled on the server."
REVOKED_TEXT = "This API key was revoked, or its account was deactivated."


class ApiError(Exception):
    """A refusal to send as an OpenAI error: `status` (HTTP), `message` (for
    people), `type`, `param` (the offending field, e.g. "messages[2].content"),
    `code` (machine-readable, e.g. "model_not_found"), and `retry_after`
    (seconds, sent as Retry-After; None: no header). `retry` False sends
    `x-should-retry: false`, which tells the SDK not to repeat a request
    that cannot succeed (a 5xx is retried otherwise)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        retry: bool = True,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.retry_after, self.retry = param, code, retry_after, retry

    def body(self) -> dict:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """The headers that go with it: Retry-After, x-should-retry, and
        WWW-Authenticate on a 401."""
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if not self.retry:
            headers["x-should-retry"] = "false"
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="chatsite"'
        return headers


def invalid(message: str, param: str | None = None) -> ApiError:
    """A 400 for a request body the API does not accept; `param` names the field."""
    return ApiError(400, message, param=param)


def unauthenticated(message: str) -> ApiError:
    """A 401: no key, an unknown or revoked key, or an inactive account."""
    return ApiError(401, message, code="invalid_api_key")


def revoked() -> ApiError:
    """A 401 (or, in an open stream, an error event) for a key revoked, or an
    account deactivated, while its request waited or ran."""
    return unauthenticated(REVOKED_TEXT)


def cancelled() -> ApiError:
    """The request was cancelled on the server (staff, in the console)."""
    return ApiError(503, CANCELLED_TEXT, type=SERVER_ERROR, code="cancelled", retry=False)


def for_service_error(code: ErrorCode, message: str) -> ApiError:
    """The generation service's `Error(code, message)` as a client sees it.

    `unavailable` is worded with the code's own sentence: the service's
    names the engine's address or a server path, which is for staff.
    """
    code = ErrorCode(code)
    if code is ErrorCode.BUSY:
        return ApiError(
            429,
            "Too many of your API requests are waiting or running at once; "
            "wait for one to finish, or try again shortly.",
            type=RATE_LIMIT,
            code="rate_limit_exceeded",
            retry_after=RETRY_AFTER_BUSY_S,
        )
    if code is ErrorCode.QUEUE_FULL:
        return ApiError(503, message, type=SERVER_ERROR, code=str(code), retry_after=RETRY_AFTER_QUEUE_FULL_S)
    if code is ErrorCode.QUEUE_TIMEOUT:
        return ApiError(
            503, message, type=SERVER_ERROR, code=str(code), retry_after=RETRY_AFTER_QUEUE_TIMEOUT_S
        )
    if code is ErrorCode.UNAVAILABLE:
        return ApiError(
            503, code.text, type=SERVER_ERROR, code=str(code), retry_after=RETRY_AFTER_UNAVAILABLE_S
        )
    if code is ErrorCode.LEASE_LOST:
        return ApiError(503, message, type=SERVER_ERROR, code=str(code), retry_after=RETRY_AFTER_LEASE_LOST_S)
    if code is ErrorCode.TOO_LONG:
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    return ApiError(500, ErrorCode.INTERNAL.text, type=SERVER_ERROR, code=str(ErrorCode.INTERNAL))
