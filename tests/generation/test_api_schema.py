"""What POST /v1/chat/completions accepts, ignores and refuses (generation.api.schema),
and the bytes of a stream (generation.api.sse). No server, no database."""

import json

import pytest

from generation.api import sse
from generation.api.errors import ApiError
from generation.api.schema import ChatCompletionRequest, parse_chat_request
from generation.runtime.types import ModelState, Usage

LIMIT = 100
HELLO = [{"role": "user", "content": "Hello"}]


def parse(**fields) -> ChatCompletionRequest:
    body = {"model": "m", "messages": HELLO, **fields}
    return parse_chat_request(json.dumps(body).encode(), max_message_chars=LIMIT)


def refused(**fields) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(**fields)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


def test_a_minimal_request_leaves_sampling_to_the_site():
    """model and messages alone: not streamed, the server's budget, no stop,
    no seed, and every sampling value None: the site's defaults, the same as
    the chat's (the model's generation config), rather than OpenAI's."""
    request = parse()
    assert request == ChatCompletionRequest(model="m", messages=HELLO)
    assert (request.stream, request.include_usage, request.max_tokens) == (False, False, None)
    assert (request.stop, request.seed) == ((), None)
    assert (request.temperature, request.top_p, request.top_k, request.repetition_penalty) == (None,) * 4


def test_every_used_field_is_read():
    request = parse(
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=7,
        temperature=0,
        top_p=0.5,
        stop=["\n\n", "END"],
        seed=-42,
        top_k=20,
        repetition_penalty=1.3,
    )
    assert request.stream and request.include_usage
    assert (request.max_tokens, request.temperature, request.top_p) == (7, 0.0, 0.5)
    assert (request.top_k, request.repetition_penalty) == (20, 1.3)
    assert (request.stop, request.seed) == (("\n\n", "END"), -42)


def test_max_completion_tokens_wins_over_max_tokens():
    assert parse(max_completion_tokens=5, max_tokens=9).max_tokens == 5
    assert parse(max_completion_tokens=None, max_tokens=9).max_tokens == 9


def test_vllms_top_k_off_is_read_as_zero():
    """vLLM's clients send top_k -1 for "off"; the engine's off is 0."""
    assert parse(top_k=-1).top_k == 0


def test_one_stop_string_is_a_tuple_of_one():
    assert parse(stop="###").stop == ("###",)
    assert parse(stop=[]).stop == ()


def test_roles_and_text_parts():
    """developer is read as system; a list of text parts is joined with newlines."""
    request = parse(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "ok", "name": "bot"},
            {"role": "user", "content": ""},
        ]
    )
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": ""},
    ]


def test_what_clients_send_by_default_is_ignored():
    """LibreChat's user and zero penalties, the SDK's nulls, tools that may
    not be called, and fields this server does not know pass unnoticed."""
    request = parse(
        user="u-1",
        presence_penalty=0,
        frequency_penalty=0.0,
        parallel_tool_calls=True,
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="none",
        n=1,
        logprobs=False,
        top_logprobs=None,
        response_format={"type": "text"},
        logit_bias={},
        stop=None,
        seed=None,
        temperature=None,
        stream_options={"include_usage": False, "include_obfuscation": True},
        metadata={"a": "b"},
        store=False,
        reasoning_effort="low",
        some_future_field=[1, 2],
    )
    assert request == ChatCompletionRequest(model="m", messages=HELLO)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ],
)
def test_what_this_server_cannot_do_is_refused(fields, param):
    assert refused(**fields).param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "Hello"}, "messages"),
        ({"messages": ["Hello"]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
        ),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": True}, "stream_options"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"max_completion_tokens": True}, "max_completion_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"repetition_penalty": 0.9}, "repetition_penalty"),
        ({"repetition_penalty": 2.5}, "repetition_penalty"),
        ({"stop": 7}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"stop": "#" * 257}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": False}, "seed"),
    ],
)
def test_wrong_types_and_ranges_are_refused_naming_the_field(fields, param):
    assert refused(**fields).param == param


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}},
        "plain string",
    ],
)
def test_non_text_content_parts_are_refused(part):
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, part]}]
    error = refused(messages=messages)
    assert error.param == "messages[0].content[1]"
    assert "text" in error.message


def test_a_message_over_the_size_limit_is_refused():
    """The limit is CHAT_MAX_MESSAGE_CHARS code points, per message, as in
    the browser chat; an emoji is one."""
    assert parse(messages=[{"role": "user", "content": "😀" * LIMIT}])
    messages = [*HELLO, {"role": "assistant", "content": "x" * (LIMIT + 1)}]
    error = refused(messages=messages)
    assert error.param == "messages[1].content"
    assert str(LIMIT) in error.message


@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_what_cannot_be_text_is_refused(bad):
    assert refused(messages=[{"role": "user", "content": f"a{bad}b"}]).param == "messages[0].content"
    assert refused(stop=[f"a{bad}"]).param == "stop"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[1]", b'"text"', b"\xff\xfe", b'{"model": "m", "temperature": NaN}'],
)
def test_a_body_that_is_not_a_json_object_is_refused(body):
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body, max_message_chars=LIMIT)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_errors_have_openais_shape():
    body = refused(n=3).body()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}


# The stream's bytes -----------------------------------------------------


def test_comment_lines_and_done():
    assert sse.queued(3, 12) == b": queued position=3 waiting=12\n\n"
    assert sse.DONE == b"data: [DONE]\n\n"


def test_the_queued_comment_says_what_the_chats_queued_frame_says():
    """The estimate once there is one; that the model is still loading."""
    assert sse.queued(3, 12, eta_s=40) == b": queued position=3 waiting=12 eta_s=40\n\n"
    loading = sse.queued(1, 1, model_state=ModelState.LOADING)
    assert loading == b": queued position=1 waiting=1 model=loading\n\n"


def test_chunks_in_order_with_usage():
    """role, content, finish, then the usage chunk with no choices; with
    include_usage every chunk says usage null, as OpenAI's do."""
    chunks = sse.Chunks(completion_id="chatcmpl-1", created=5, model="m", include_usage=True)
    events = [chunks.role(), chunks.content("Hi\n"), chunks.finish("stop"), chunks.usage(Usage(3, 2))]
    for raw in events:
        assert raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2
    role, content, finish, usage = (json.loads(raw[6:]) for raw in events)
    assert role["object"] == "chat.completion.chunk" and role["id"] == "chatcmpl-1"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content["choices"][0]["delta"] == {"content": "Hi\n"}
    assert content["usage"] is None
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_chunks_without_usage_carry_no_usage_key():
    chunks = sse.Chunks(completion_id="chatcmpl-1", created=5, model="m", include_usage=False)
    assert "usage" not in json.loads(chunks.content("x")[6:])
