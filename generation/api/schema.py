"""The body of POST /v1/chat/completions: parsed, checked, and typed.

What clients send is untrusted, and what they send by default varies: the
`openai` SDK sends little, LibreChat sends `user` and both penalties at 0
on every call, Open WebUI sends `stream_options`. So:

- **Used**: `model`, `messages` (roles system, developer (read as system),
  user, assistant; content a string or a list of `{"type": "text"}` parts,
  joined with newlines), `stream`, `stream_options.include_usage`,
  `max_completion_tokens` or the older `max_tokens` (the first wins; the
  service caps it at its own limit), `temperature`, `top_p`, `stop` (a string
  or up to 4), `seed`, and vLLM's `top_k` (-1 or 0: off) and
  `repetition_penalty` (1 to 2). Each may be null, which means "not given":
  a sampling value not given takes the site's default, the same as the
  chat's (the model's generation config; generation.runtime.sampling).
- **Ignored**: `user`, `parallel_tool_calls`, `presence_penalty` and
  `frequency_penalty` at 0, `tools` with `tool_choice` "none", and every
  field this module does not name (as vLLM does).
- **Refused** with 400 naming the field (`param`): `n` other than 1,
  `logprobs` true or `top_logprobs`, `tools` (or the older `functions`)
  that the model would be asked to call, non-zero penalties, a
  `response_format` other than text, a non-empty `logit_bias`, content
  parts other than text, a wrong type or range anywhere above, no
  messages, and a message longer than CHAT_MAX_MESSAGE_CHARS code points
  or holding what cannot be text (generation.text).

`parse_chat_request` raises `ApiError` (generation.api.errors); the model's
name is checked by the view, which knows the served one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from generation import text
from generation.api.errors import invalid

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_STRINGS = 4
# Characters in one stop string. The engine holds back, and checks on every
# token, any tail of the reply that could still begin a stop string: work
# that grows with the square of its length, on the model thread every reply
# shares. A stop string is a delimiter; 256 is far above any real one.
MAX_STOP_CHARS = 256
# OpenAI's seed is a signed 64-bit integer; torch.Generator takes the same.
SEED_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class ChatCompletionRequest:
    """A checked chat-completion request.

    `messages` are {"role", "content"} dicts as the generation service takes
    them (roles system, user, assistant; content a string). `max_tokens` is
    the asked reply budget in tokens (None: the server's), `stop` up to four
    non-empty strings, `seed` None for unseeded sampling; `temperature`,
    `top_p`, `top_k` and `repetition_penalty` None for the site's default.
    """

    model: str
    messages: list[dict[str, str]]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None


def parse_chat_request(body: bytes, *, max_message_chars: int) -> ChatCompletionRequest:
    """Parse and check a request body (UTF-8 JSON). Raises ApiError (400)
    with the offending field as `param`; see the module's docstring."""
    data = _json_object(body)
    _refuse_unsupported(data)
    stream = _optional(data, "stream", bool, False)
    options = _optional(data, "stream_options", dict, {})
    include_usage = _optional(options, "include_usage", bool, False, where="stream_options.include_usage")
    max_tokens = _optional_int(data, "max_completion_tokens", low=1)
    if max_tokens is None:
        max_tokens = _optional_int(data, "max_tokens", low=1)
    return ChatCompletionRequest(
        model=_model(data),
        messages=_messages(data, max_message_chars),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        temperature=_optional_number(data, "temperature", None, low=0.0, high=2.0),
        top_p=_optional_number(data, "top_p", None, low=0.0, high=1.0, low_open=True),
        stop=_stop(data.get("stop"), min(max_message_chars, MAX_STOP_CHARS)),
        seed=_optional_int(data, "seed", low=SEED_RANGE[0], high=SEED_RANGE[1]),
        top_k=_top_k(data),
        repetition_penalty=_optional_number(data, "repetition_penalty", None, low=1.0, high=2.0),
    )


def _top_k(data: dict) -> int | None:
    """vLLM's top_k: -1 and 0 both mean off (0 here)."""
    top_k = _optional_int(data, "top_k", low=-1, high=1_000_000)
    return 0 if top_k == -1 else top_k


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise invalid("The request body must be UTF-8 JSON.") from None
    except (ValueError, RecursionError):
        raise invalid("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _model(data: dict) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required: the name GET /v1/models lists.", "model")
    return model


def _messages(data: dict, max_chars: int) -> list[dict[str, str]]:
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise invalid("'messages' is required: a list of messages.", "messages")
    if not messages:
        raise invalid("'messages' must hold at least one message.", "messages")
    return [_message(message, f"messages[{i}]", max_chars) for i, message in enumerate(messages)]


def _message(message, where: str, max_chars: int) -> dict[str, str]:
    if not isinstance(message, dict):
        raise invalid(f"'{where}' must be an object with 'role' and 'content'.", where)
    role = message.get("role")
    if role not in ROLES:
        raise invalid(f"'{where}.role' must be one of: {', '.join(ROLES)}.", f"{where}.role")
    content = _content(message.get("content"), f"{where}.content")
    try:
        text.check(content, what="message", limit=max_chars)
    except text.TextRefused as refused:
        raise invalid(str(refused), f"{where}.content") from None
    return {"role": "system" if role == "developer" else role, "content": content}


def _content(content, where: str) -> str:
    """A message's text: the string, or its text parts joined with newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"'{where}' must be a string or a list of text parts.", where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise invalid(f"'{where}[{j}]': only text content parts are supported.", f"{where}[{j}]")
        if not isinstance(part.get("text"), str):
            raise invalid(f"'{where}[{j}].text' must be a string.", f"{where}[{j}].text")
        texts.append(part["text"])
    return "\n".join(texts)


def _stop(stop, max_chars: int) -> tuple[str, ...]:
    if stop is None:
        return ()
    strings = [stop] if isinstance(stop, str) else stop
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise invalid("'stop' must be a string or a list of strings.", "stop")
    if len(strings) > MAX_STOP_STRINGS:
        raise invalid(f"'stop' may hold at most {MAX_STOP_STRINGS} strings.", "stop")
    for string in strings:
        if not string:
            raise invalid("'stop' strings must not be empty.", "stop")
        try:
            text.check(string, what="stop string", limit=max_chars)
        except text.TextRefused as refused:
            raise invalid(str(refused), "stop") from None
    return tuple(strings)


def _refuse_unsupported(data: dict) -> None:
    """Refuse what asks for something this server cannot do; what asks for
    nothing (the defaults clients send) passes."""
    n = data.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise invalid("Only one choice per request is supported: 'n' must be 1.", "n")
    if data.get("logprobs") not in (None, False):
        raise invalid("'logprobs' is not supported.", "logprobs")
    if data.get("top_logprobs") not in (None, 0):
        raise invalid("'top_logprobs' is not supported.", "top_logprobs")
    for tools, choice in (("tools", "tool_choice"), ("functions", "function_call")):
        if data.get(tools) and data.get(choice) != "none":
            raise invalid(f"Tool calls are not supported: send no '{tools}', or '{choice}': \"none\".", tools)
    for penalty in ("presence_penalty", "frequency_penalty"):
        if _optional_number(data, penalty, 0.0) != 0:
            raise invalid(f"'{penalty}' is not supported; send 0 or leave it out.", penalty)
    response_format = _optional(data, "response_format", dict, {})
    if response_format.get("type", "text") != "text":
        raise invalid("Only text responses are supported: 'response_format' must be text.", "response_format")
    if _optional(data, "logit_bias", dict, {}):
        raise invalid("'logit_bias' is not supported.", "logit_bias")


def _optional(data: dict, name: str, kind: type, default, *, where: str | None = None):
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        noun = {bool: "true or false", dict: "an object"}[kind]
        raise invalid(f"'{where or name}' must be {noun}.", where or name)
    return value


def _optional_int(data: dict, name: str, *, low: int, high: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    # bool is an int subclass, and true is not a number of tokens.
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise invalid(f"'{name}' must be an integer {bounds}.", name)
    return value


def _optional_number(
    data: dict,
    name: str,
    default: float | None,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
) -> float | None:
    value = data.get(name)
    if value is None:
        return default
    if type(value) not in (int, float) or not (low < value if low_open else low <= value) or value > high:
        if math.isinf(low):
            raise invalid(f"'{name}' must be a number.", name)
        opening = ">" if low_open else ">="
        raise invalid(f"'{name}' must be a number {opening} {low:g} and <= {high:g}.", name)
    return float(value)
