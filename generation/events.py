"""The /ws/chat/ protocol: parsing client frames and building server frames.

docs/protocol.md describes the same frames for people; keep the two in step.
Every builder returns a JSON-safe dict; the consumer only sends them.
"""

import dataclasses
import json
from dataclasses import dataclass

from django.conf import settings
from django.utils.translation import get_language
from django.utils.translation import gettext as _

from generation import text
from generation.runtime.types import Done, Error, ErrorCode

# Error codes are worded in one place: generation.runtime.types.ERROR_TEXT
# (the page receives the same table, see generation.views.chat).


class ClientError(Exception):
    """A frame the server refuses; `code` and `message` (default: the code's
    words) go back as an error frame. The message is in the language active
    where it is raised (the consumer activates the reader's), and `lang`
    records which, so that the page shows the specific reason rather than
    the code's general words (`refusal`)."""

    def __init__(self, code: ErrorCode, message: str | None = None):
        self.code = ErrorCode(code)
        self.message = message or _(self.code.text)
        self.lang = get_language() or settings.LANGUAGE_CODE
        super().__init__(self.message)


@dataclass(frozen=True)
class Send:
    """A `send` frame: a new user message for a conversation (None: a new one)."""

    conversation: int | None
    content: str


@dataclass(frozen=True)
class Cancel:
    """A `cancel` frame: stop this connection's active request."""


@dataclass(frozen=True)
class Open:
    """An `open` frame: the page shows `conversation`; attach to its live reply."""

    conversation: int


@dataclass(frozen=True)
class Regenerate:
    """A `regenerate` frame: a new reply to the conversation's last question,
    in place of `message`, its last reply (or the question, if it has none)."""

    conversation: int
    message: int


@dataclass(frozen=True)
class Edit:
    """An `edit` frame: `content` replaces `message`, the conversation's last
    question; a new reply is asked for."""

    conversation: int
    message: int
    content: str


ClientFrame = Send | Cancel | Open | Regenerate | Edit


# The most characters JSON can spend on one code point: an astral one (an
# emoji) escaped as a surrogate pair, "\ud83d\ude00".
MAX_ESCAPED_CHARS_PER_CODE_POINT = 12


def max_frame_chars() -> int:
    """The longest text frame worth parsing: a content of CHAT_MAX_MESSAGE_CHARS
    code points escaped as long as JSON allows, plus room for the other fields.
    A hard cap, checked before parsing, so a huge frame costs no JSON work."""
    return settings.CHAT_MAX_MESSAGE_CHARS * MAX_ESCAPED_CHARS_PER_CODE_POINT + 1024


def parse_client_frame(text_data: str | None, bytes_data: bytes | None) -> ClientFrame:
    """Validate one client frame; raises ClientError(ErrorCode.INVALID) with the reason."""
    if text_data is None:
        raise ClientError(ErrorCode.INVALID, _("Frames must be JSON text, not binary."))
    if len(text_data) > max_frame_chars():
        raise ClientError(ErrorCode.INVALID, _("The frame is too large."))
    try:
        frame = json.loads(text_data)
    except (ValueError, RecursionError):
        raise ClientError(ErrorCode.INVALID, _("The frame is not valid JSON.")) from None
    if not isinstance(frame, dict):
        raise ClientError(ErrorCode.INVALID, _("The frame must be a JSON object."))
    kind = frame.get("type")
    if kind == "cancel":
        return Cancel()
    if kind == "send":
        conversation = frame.get("conversation")
        if conversation is not None:
            conversation = _id(frame, "conversation", _("'conversation' must be a conversation id or null."))
        return Send(conversation=conversation, content=_content(frame))
    if kind == "open":
        return Open(conversation=_id(frame, "conversation", _("'conversation' must be a conversation id.")))
    if kind in ("regenerate", "edit"):
        conversation = _id(frame, "conversation", _("'conversation' must be a conversation id."))
        message = _id(frame, "message", _("'message' must be a message id."))
        if kind == "regenerate":
            return Regenerate(conversation=conversation, message=message)
        return Edit(conversation=conversation, message=message, content=_content(frame))
    raise ClientError(
        ErrorCode.INVALID, _("Unknown frame type; expected 'send', 'cancel', 'open', 'regenerate' or 'edit'.")
    )


def _id(frame: dict, field: str, why: str) -> int:
    """The positive integer id in `frame[field]`; bool is an int subclass, and
    true is not an id."""
    value = frame.get(field)
    if type(value) is not int or value < 1:
        raise ClientError(ErrorCode.INVALID, why)
    return value


def _content(frame: dict) -> str:
    """A message's text, checked as every message is (generation.text)."""
    content = frame.get("content")
    if not isinstance(content, str):
        raise ClientError(ErrorCode.INVALID, _("'content' must be a string."))
    if not content.strip():
        raise ClientError(ErrorCode.INVALID, _("The message is empty."))
    try:
        text.check(content, what="message", limit=settings.CHAT_MAX_MESSAGE_CHARS)
    except text.TextRefused as refused:
        raise ClientError(ErrorCode.INVALID, str(refused)) from None
    return content


def accepted(request: str, conversation: int, user_message: int) -> dict:
    """The user's message is stored and its reply requested."""
    return {
        "type": "accepted",
        "request": request,
        "conversation": conversation,
        "user_message": user_message,
    }


def queued(
    request: str,
    position: int,
    waiting: int,
    *,
    model_state: str = "ready",
    eta_s: int | None = None,
    moved_back: bool = False,
) -> dict:
    """The request waits in the queue at `position` of `waiting`;
    `model_state` is "loading" while the model loads (nothing starts until it
    is "ready"), `eta_s` about how many seconds until the reply starts, or
    None while unknown (see generation.runtime.eta). `moved_back` (sent only
    when true): the position grew because requests of a better priority
    class went ahead (issue #15)."""
    frame = {
        "type": "queued",
        "request": request,
        "position": position,
        "waiting": waiting,
        "model_state": str(model_state),
        "eta_s": eta_s,
    }
    if moved_back:
        frame["moved_back"] = True
    return frame


def started(request: str, message: int) -> dict:
    """The reply started; `message` is its stored assistant message."""
    return {"type": "started", "request": request, "message": message}


def token(request: str, text: str) -> dict:
    """A piece of the reply's text, to append."""
    return {"type": "token", "request": request, "text": text}


def attached(
    request: str,
    *,
    conversation: int,
    user_message: int,
    message: int | None,
    text: str,
    position: tuple[int, int] | None,
    model_state: str | None = None,
    eta_s: int | None = None,
) -> dict:
    """This socket now shows a live reply (after `open`, e.g. on a reloaded
    page): `message` is its stored reply (None while queued), `text` all of
    it so far, `position`/`waiting` its place while queued (None once started,
    or before its first place is known), and `model_state`/`eta_s` as its
    last `queued` frame said (None when it had none, or once started).
    Its usual frames follow."""
    return {
        "type": "attached",
        "request": request,
        "conversation": conversation,
        "user_message": user_message,
        "message": message,
        "text": text,
        "position": position[0] if position else None,
        "waiting": position[1] if position else None,
        "model_state": str(model_state) if model_state is not None else None,
        "eta_s": eta_s,
    }


def idle(conversation: int) -> dict:
    """After `open`: no reply of `conversation` is live on this server process."""
    return {"type": "idle", "conversation": conversation}


def done(request: str, message: int | None, event: Done, *, code: str | None = None) -> dict:
    """The reply ended (`message` is None when it was cancelled before
    starting); `code` is "cancelled_by_staff" when staff stopped it, else None."""
    return {
        "type": "done",
        "request": request,
        "message": message,
        "code": code,
        "finish_reason": str(event.finish_reason),
        "usage": dataclasses.asdict(event.usage),
        "timings": dataclasses.asdict(event.timings),
    }


def error(request: str | None, code: ErrorCode, message: str | None = None) -> dict:
    """An error in plain words (default: the code's); `request` is None when
    no request was made."""
    code = ErrorCode(code)
    return {"type": "error", "request": request, "code": str(code), "message": message or code.text}


def refusal(refused: ClientError) -> dict:
    """A refused frame (`request` null) as an error frame whose message is in
    the reader's language, named by `lang` (a language code of
    settings.LANGUAGES): the page shows it as it is."""
    return {**error(None, refused.code, refused.message), "lang": refused.lang}


def service_error(request: str, event: Error) -> dict:
    """A service `Error` event as a frame: its code, and the service's
    sentence, which is the code's words or something more precise (how long
    the message is). Except for `unavailable`: the service's sentence names
    the engine's address or a server path, which is for staff (the console,
    the log), not for everyone who chats; people get the code's words."""
    if event.code == ErrorCode.UNAVAILABLE:
        return error(request, event.code, ErrorCode.UNAVAILABLE.text)
    return error(request, event.code, event.message)
