"""HTTP views of the chat: the page, the JSON the page's script reads, and
the API keys page.

Every view answers only for the requesting user's conversations and keys;
another user's id is a 404, the same as an id that does not exist.
"""

import functools
import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generation import selectors, services, text
from generation.forms import ApiKeyCreateForm
from generation.models import ApiKey, Conversation
from generation.runtime.types import ERROR_TEXT


def login_required_json(view):
    """Like login_required, but answers 401 JSON instead of redirecting: the
    page's script asks, and it reloads the page to reach the login form."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return JsonResponse({"error": _("Log in first.")}, status=401)
        return view(request, *args, **kwargs)

    return wrapper


def _own_conversation(request, conversation_id: int) -> Conversation:
    try:
        return selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None


@login_required
@require_GET
def chat(request, conversation_id: int | None = None):
    """The chat page, optionally opened on one of the user's conversations."""
    if conversation_id is not None:
        _own_conversation(request, conversation_id)
    return render(
        request,
        "generation/chat.html",
        {
            "chat_config": {
                "conversation": conversation_id,
                "maxChars": settings.CHAT_MAX_MESSAGE_CHARS,
                "socketPath": "/ws/chat/",
                # In the reader's language: the page words error frames by their code.
                "errorText": {str(code): _(text) for code, text in ERROR_TEXT.items()},
            }
        },
    )


@login_required_json
@require_GET
def conversation_list(request):
    """The user's conversations for the sidebar, newest first."""
    conversations = selectors.conversation_list(owner=request.user)[:200]
    return JsonResponse({"conversations": [selectors.conversation_serialize(c) for c in conversations]})


@login_required_json
@require_GET
def conversation_search(request):
    """The person's conversations matching `?q=` in their titles or messages
    (selectors.conversation_search): {"results": [{"id", "title", "snippet"}]}."""
    results = selectors.conversation_search(owner=request.user, query=request.GET.get("q", ""))
    return JsonResponse({"results": results})


@login_required_json
@require_GET
def conversation_detail(request, conversation_id: int):
    """One conversation with its stored messages: what a reload or reconnect shows."""
    conversation = _own_conversation(request, conversation_id)
    messages = selectors.message_list(conversation=conversation)
    return JsonResponse(
        {
            "conversation": selectors.conversation_serialize(conversation),
            "messages": [selectors.message_serialize(m) for m in messages],
        }
    )


@login_required_json
@require_POST
def conversation_rename(request, conversation_id: int):
    """Rename a conversation; the body is JSON {"title": "..."}.

    Answers 400 with {"error": "<sentence>"} when the body is not such an
    object, the title is empty, or it cannot be stored (generation.text).
    """
    conversation = _own_conversation(request, conversation_id)
    try:
        body = json.loads(request.body.decode("utf-8"))
    except UnicodeDecodeError:
        return JsonResponse({"error": _("The request body must be UTF-8 JSON.")}, status=400)
    except (ValueError, RecursionError):
        return JsonResponse({"error": _('The request body must be JSON: {"title": "..."}.')}, status=400)
    title = body.get("title") if isinstance(body, dict) else None
    if not isinstance(title, str) or not title.strip():
        return JsonResponse({"error": _("Give the conversation a title.")}, status=400)
    try:
        conversation = services.conversation_rename(conversation=conversation, title=title)
    except text.TextRefused as refused:
        return JsonResponse({"error": str(refused)}, status=400)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None
    return JsonResponse({"conversation": selectors.conversation_serialize(conversation)})


@login_required_json
@require_POST
def conversation_sampling(request, conversation_id: int):
    """Set how the conversation's next replies are sampled; the body is JSON
    {"temperature": <0 to 2, 0 greedy> or null (the site's default)}.

    Answers {"conversation": {...}} with the value in effect, or 400 with
    {"error": "<sentence>"} when the body is not such an object or the value
    is out of range; the conversation is then unchanged.
    """
    conversation = _own_conversation(request, conversation_id)
    body = _json_body(request)
    if not isinstance(body, dict) or "temperature" not in body:
        return JsonResponse({"error": _('The request body must be JSON: {"temperature": 0.7}.')}, status=400)
    try:
        conversation = services.conversation_set_temperature(
            conversation=conversation, temperature=body["temperature"]
        )
    except ValueError as error:
        return JsonResponse({"error": f"{str(error).capitalize()}, or null for the default."}, status=400)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None
    return JsonResponse({"conversation": selectors.conversation_serialize(conversation)})


def _json_body(request):
    """The request's JSON body, or None when it is not UTF-8 JSON."""
    try:
        return json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


@login_required_json
@require_POST
def conversation_delete(request, conversation_id: int):
    """Delete a conversation (its reply, if live, stops). It can be brought
    back with conversation_restore for services.DELETE_UNDO_WINDOW; the
    answer gives that window in seconds: {"deleted": id, "undo_s": 60}."""
    services.conversation_delete(conversation=_own_conversation(request, conversation_id))
    return JsonResponse(
        {"deleted": conversation_id, "undo_s": int(services.DELETE_UNDO_WINDOW.total_seconds())}
    )


@login_required_json
@require_POST
def conversation_restore(request, conversation_id: int):
    """Undo a delete of the person's conversation: {"conversation": {...}}.
    404 when there is nothing of theirs to restore (another person's id, not
    deleted, or deleted longer ago than services.DELETE_UNDO_WINDOW)."""
    try:
        conversation = services.conversation_restore(owner=request.user, conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation.") from None
    return JsonResponse({"conversation": selectors.conversation_serialize(conversation)})


def _keys_page(request, form: ApiKeyCreateForm, *, status: int = 200):
    return render(
        request,
        "generation/keys.html",
        {"form": form, "api_keys": selectors.api_keys_of(request.user)},
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request):
    """The person's API keys (GET), and making a new one (POST, form field `name`).

    A new key's token is shown on the answer to that POST and never again:
    the page is not cached, and a reload asks the browser to post again,
    which makes another key rather than showing this one. An unusable name
    is shown as the form's error, with status 400.
    """
    if request.method == "GET":
        return _keys_page(request, ApiKeyCreateForm())
    form = ApiKeyCreateForm(request.POST)
    if form.is_valid():
        try:
            api_key, token = services.api_key_create(user=request.user, name=form.cleaned_data["name"])
        except text.TextRefused as refused:
            form.add_error("name", str(refused))
        else:
            response = render(request, "generation/key_created.html", {"api_key": api_key, "token": token})
            add_never_cache_headers(response)
            return response
    return _keys_page(request, form, status=400)


@login_required
@require_POST
def api_key_revoke(request, key_id: int):
    """Revoke one of the person's keys, then show the list again; another
    person's key, or none, is a 404."""
    try:
        api_key = selectors.api_key_get(user=request.user, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404("No such key.") from None
    if api_key.is_revoked:
        messages.info(request, _("“%(name)s” was already revoked.") % {"name": api_key.name})
    else:
        services.api_key_revoke(api_key=api_key)
        messages.success(
            request,
            _("“%(name)s” is revoked: programs using it are refused from now on.") % {"name": api_key.name},
        )
    return redirect("api-keys")
