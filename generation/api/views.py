"""The /v1/ views: GET /v1/models and POST /v1/chat/completions.

Thin async views: authenticate the bearer key (never a session cookie, and
CSRF does not apply), check the body (generation.api.schema), submit to
this process's generation service as an API request of the key's owner,
and answer from its events (generation.api.call), whole or streamed. The
request goes through the same queue, cap, per-user limit (the API's own),
cancel and records as a chat reply; no conversation is stored.

Overload is answered before a stream starts where it can be: the view
waits up to FIRST_EVENT_WAIT_S for the service's first word, so that a full
queue is a 503 and the per-user limit a 429, each with Retry-After, which
the `openai` SDK honours. Before a remote engine has named its model
(first contact), a request waits for the name up to MODEL_NAME_WAIT_S,
then 503 `unavailable`. A stream open while the request waits carries
`: queued position=N waiting=M` comment lines (with `eta_s=S` and
`model=loading` when the chat's queued frame would say so) whenever any of
that changes, and at least every KEEPALIVE_S. A client that disconnects cancels its
request, queued or running: Django cancels the view's task when the server
reports the disconnect, and the call is closed however its reader ends.
"""

import asyncio
import time

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from generation import selectors, services
from generation.api import errors, shapes, sse
from generation.api.call import REVOKED, ApiCall
from generation.api.errors import ApiError
from generation.api.schema import parse_chat_request
from generation.runtime.registry import get_service
from generation.runtime.source import ModelLoadError, resolve_source
from generation.runtime.types import (
    Done,
    Error,
    ErrorCode,
    FinishReason,
    Queued,
    RequestSource,
    Started,
    Token,
)

# How long a request waits for the service's first event (queued, started,
# or refused) before its stream opens anyway; the site queue answers
# within its Redis timeout, the process's own queue at once.
FIRST_EVENT_WAIT_S = 5.0
# How long a request waits for the served model's name while the backend has
# not named it yet (the openai backend before the engine is first reached,
# GENERATION_OPENAI_MODEL unset); then 503 unavailable. docs/api.md says so.
MODEL_NAME_WAIT_S = 30.0
# The longest a stream stays silent: a comment line goes out after this.
KEEPALIVE_S = 10.0
# The `created` of the model card: when this process started serving.
SERVING_SINCE = int(time.time())

_authenticate = database_sync_to_async(selectors.api_key_authenticate)
_touch = database_sync_to_async(services.api_key_touch)
_renew_digest = database_sync_to_async(services.api_key_renew_digest)


def _error_response(error: ApiError) -> JsonResponse:
    return JsonResponse(error.body(), status=error.status, headers=error.headers())


def api_view(*methods: str):
    """Make an async view an API endpoint: CSRF-exempt (a bearer key is no
    ambient credential), `methods` only (405 otherwise), and every ApiError
    it raises answered in OpenAI's shape."""

    def decorate(view):
        async def endpoint(request, *args, **kwargs):
            if request.method not in methods:
                response = _error_response(
                    ApiError(405, f"{request.method} is not allowed here; use {' or '.join(methods)}.")
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return await view(request, *args, **kwargs)
            except ApiError as error:
                return _error_response(error)

        endpoint.__doc__, endpoint.__name__ = view.__doc__, view.__name__
        return csrf_exempt(endpoint)

    return decorate


async def authenticate(request):
    """The live ApiKey of the request's `Authorization: Bearer <key>`, its
    use recorded; raises ApiError 401 without one. Cookies are never read."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.unauthenticated(
            "No API key: send it as 'Authorization: Bearer <key>'. Make one on the API keys page."
        )
    api_key = await _authenticate(token.strip())
    if api_key is None:
        raise errors.unauthenticated("The API key is unknown or was revoked, or its account is inactive.")
    if settings.SECRET_KEY_FALLBACKS:  # otherwise the key matched under SECRET_KEY itself
        await _renew_digest(api_key=api_key, token=token.strip())
    await _touch(api_key=api_key)
    return api_key


def served_model_id(service) -> str:
    """The model's name as /v1/ serves it: the backend's once known (the
    loaded model's, or the one the engine serves), else the configured one
    (the local model's file or folder name, GENERATION_OPENAI_MODEL)."""
    if service.model_name:
        return service.model_name
    if settings.GENERATION_BACKEND == "openai":
        return settings.GENERATION_OPENAI_MODEL
    try:
        return resolve_source(settings.GENERATION_MODEL).label
    except ModelLoadError:
        return ""


async def aserved_model_id(service) -> str:
    """The served model's id (served_model_id); while the backend has not
    named it yet (a remote engine not reached yet), waits for it up to
    MODEL_NAME_WAIT_S without blocking the loop. Raises ApiError 503
    `unavailable`, with Retry-After, if it is still not known then."""
    model = served_model_id(service)
    if not model:
        await service.amodel_name(MODEL_NAME_WAIT_S)
        model = served_model_id(service)
    if not model:
        raise errors.for_service_error(ErrorCode.UNAVAILABLE, "")
    return model


@api_view("GET")
async def models(request):
    """GET /v1/models: the one served model (clients check a connection with it)."""
    await authenticate(request)
    service = get_service()
    model = await aserved_model_id(service)
    return JsonResponse(shapes.model_list(model, SERVING_SINCE, service.backend_info.context_tokens))


@api_view("GET")
async def model_detail(request, model_id: str):
    """GET /v1/models/{id}: the served model's card, or 404 model_not_found."""
    await authenticate(request)
    service = get_service()
    served = await aserved_model_id(service)
    if model_id != served:
        raise _model_not_found(model_id)
    return JsonResponse(shapes.model_card(served, SERVING_SINCE, service.backend_info.context_tokens))


@api_view("POST")
async def chat_completions(request):
    """POST /v1/chat/completions: a reply to `messages`, whole or streamed."""
    api_key = await authenticate(request)
    try:
        body = parse_chat_request(request.body, max_message_chars=settings.CHAT_MAX_MESSAGE_CHARS)
    except RequestDataTooBig:
        raise errors.invalid(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        ) from None
    service = get_service()
    model = await aserved_model_id(service)
    if body.model != model:
        raise _model_not_found(body.model)
    handle = service.submit(
        user_id=api_key.user_id,
        messages=body.messages,
        max_new_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        meta={"user": api_key.user.get_username(), "api_key": api_key.pk},
        source=RequestSource.API,
        api_key_id=api_key.pk,
        stop=body.stop,
        seed=body.seed,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
    )
    call = ApiCall(handle, api_key)
    # However this request ends (an answer, a disconnect that cancels this
    # task, a stream that never began to be read), its call is closed.
    asyncio.current_task().add_done_callback(lambda _: call.close())
    completion_id = f"chatcmpl-{handle.id}"
    try:
        first = await call.next(FIRST_EVENT_WAIT_S)
        _raise_if_refused(first)
        if body.stream:
            chunks = sse.Chunks(
                completion_id=completion_id,
                created=int(time.time()),
                model=model,
                include_usage=body.include_usage,
            )
            response = _event_stream(stream(call, first, chunks))
        else:
            response = JsonResponse(await answer(call, first, completion_id, model))
    except ApiError as error:
        call.close()
        response = _error_response(error)
    except BaseException:
        call.close()
        raise
    # As OpenAI's: the id the console and the records know the request by.
    response["X-Request-Id"] = handle.id
    return response


def _model_not_found(model_id: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model_id}' does not exist here; GET /v1/models lists the one served.",
        param="model",
        code="model_not_found",
    )


def _raise_if_refused(event) -> None:
    """Raise the ApiError for a terminal event that ends a request before
    any of its answer went out."""
    if isinstance(event, Error):
        raise errors.for_service_error(event.code, event.message)
    if event is REVOKED:
        raise errors.revoked()
    if isinstance(event, Done) and event.finish_reason is FinishReason.CANCELLED:
        raise errors.cancelled()


async def answer(call: ApiCall, event, completion_id: str, model: str) -> dict:
    """The whole `chat.completion`, once the request has ended; raises the
    ApiError of a request that failed, was cancelled, or lost its key."""
    while not isinstance(event, Done):
        _raise_if_refused(event)
        event = await call.next(None)
    _raise_if_refused(event)
    return shapes.completion(
        completion_id=completion_id,
        created=int(time.time()),
        model=model,
        text=event.text,
        finish_reason=event.finish_reason.openai_name,
        counts=event.usage,
    )


async def stream(call: ApiCall, event, chunks: sse.Chunks):
    """The stream's bytes, from the first event on (generation.api.sse has
    the order); the call is closed when it ends, whyever it ends."""
    place = None  # while queued: the last comment line about it
    role_sent = False
    try:
        while True:
            if event is None:  # silent for KEEPALIVE_S
                yield place or sse.KEEPALIVE
            elif isinstance(event, Queued):
                # The service sends one when the place, the model's state or
                # the (rounded) estimate changed; so does the comment.
                place = sse.queued(
                    event.position, event.waiting, eta_s=event.eta_s, model_state=event.model_state
                )
                yield place
            elif isinstance(event, Started):
                place = None
                if not role_sent:
                    role_sent = True
                    yield chunks.role()
            elif isinstance(event, Token):
                if event.text:
                    yield chunks.content(event.text)
            elif isinstance(event, Done) and event.finish_reason is not FinishReason.CANCELLED:
                if not role_sent:
                    yield chunks.role()
                yield chunks.finish(event.finish_reason.openai_name)
                if chunks.include_usage:
                    yield chunks.usage(event.usage)
                yield sse.DONE
                return
            else:  # an error, a cancel on the server, a revoked key
                try:
                    _raise_if_refused(event)
                except ApiError as error:
                    yield sse.event(error.body())
                yield sse.DONE
                return
            event = await call.next(KEEPALIVE_S)
    finally:
        call.close()


def _event_stream(content) -> StreamingHttpResponse:
    response = StreamingHttpResponse(content, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


@csrf_exempt
async def not_found(request, path: str = ""):
    """Any other /v1/ path: 404 in OpenAI's shape (this server offers chat
    completions and models only)."""
    return _error_response(
        ApiError(
            404,
            f"Unknown endpoint {request.method} /v1/{path}; "
            "this server offers /v1/chat/completions and /v1/models.",
            code="unknown_url",
        )
    )
