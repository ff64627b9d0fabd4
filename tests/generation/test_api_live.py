"""The OpenAI-compatible API on a live daphne, through the official `openai`
SDK and through raw HTTP bytes, sharing one queue with the browser chat.

One daphne for the module, on the tiny model, with a cap of 1 and room for
two waiting requests, so that one long browser reply (a 4000-token budget,
stopped with `cancel`) holds the only slot. Run under the live-test lock
(tests/live.py starts daphne).
"""

import asyncio
import http.client
import json
import time
import urllib.parse

import openai
import pytest

from generation.api.errors import RETRY_AFTER_BUSY_S, RETRY_AFTER_QUEUE_FULL_S
from generation.wsclient import ChatSocket, login
from tests.live import daphne, live_env, manage_shell, prepare_database
from tests.polling import poll

HELLO = [{"role": "user", "content": "hello"}]

SEED = """
import json
from django.contrib.auth import get_user_model
from generation import services
users = {name: get_user_model().objects.create_user(name, password="pw-" + name + "-4821") for name in ("ann", "ben", "cat")}
tokens = {name: services.api_key_create(user=user, name="tests")[1] for name, user in users.items()}
tokens["spare"] = services.api_key_create(user=users["ben"], name="spare")[1]
print(json.dumps(tokens))
"""


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The daphne's base URL, its environment, and the API tokens of ann,
    ben, cat (and ben's "spare" key)."""
    folder = tmp_path_factory.mktemp("api-live")
    env = live_env(
        folder / "db.sqlite3",
        model=tiny_model_dir,
        GENERATION_MAX_CONCURRENCY="1",
        GENERATION_MAX_QUEUE="2",
        GENERATION_MAX_NEW_TOKENS="4000",
        DEBUG="1",
    )
    tokens = prepare_database(env, SEED)
    with daphne(env, folder / "daphne.log") as url:
        yield {"url": url, "env": env, "tokens": tokens}


def sdk(server, name: str, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server['url']}/v1", api_key=server["tokens"][name], max_retries=max_retries, timeout=120
    )


@pytest.fixture(scope="module")
def model(server) -> str:
    """The served model's id, as GET /v1/models lists it."""
    return sdk(server, "ben").models.list().data[0].id


def record_of(server, request_id: str, outcome: str) -> dict:
    """The stored record of `request_id` once it has `outcome` (polled; the
    statistics writer flushes every second)."""
    code = f"""
import json
from queueadmin.models import GenerationRecord
r = GenerationRecord.objects.filter(request_id={request_id!r}).values("source", "outcome", "completion_tokens", "api_key__name").first()
print(json.dumps(r))
"""
    return poll(
        lambda: (r := manage_shell(server["env"], code)) and r["outcome"] == outcome and r, timeout=15
    )


# Raw HTTP --------------------------------------------------------------------


class RawStream:
    """A streamed POST /v1/chat/completions read byte for byte (blocking)."""

    def __init__(self, server, name: str, **fields):
        netloc = urllib.parse.urlsplit(server["url"]).netloc
        self.connection = http.client.HTTPConnection(netloc, timeout=60)
        body = {"model": fields.pop("model"), "messages": HELLO, "stream": True, **fields}
        headers = {"Authorization": f"Bearer {server['tokens'][name]}", "Content-Type": "application/json"}
        self.connection.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        self.response = self.connection.getresponse()

    def event(self) -> bytes:
        """The next event or comment, without its blank line."""
        lines = []
        while (line := self.response.readline()) not in (b"\n", b""):
            lines.append(line)
        return b"".join(lines).removesuffix(b"\n")

    def next_place(self) -> tuple[int, int]:
        """The next (position, waiting) the stream's queued comments say,
        skipping those that repeat the last place (keep-alives, and lines
        where only the estimate `eta_s` changed)."""
        while True:
            event = self.event()
            assert event.startswith(b": queued position="), event
            words = dict(word.split(b"=", 1) for word in event.removeprefix(b": queued ").split())
            place = (int(words[b"position"]), int(words[b"waiting"]))
            if place != getattr(self, "place", None):
                self.place = place
                return place

    def until_done(self) -> list[bytes]:
        events = [self.event()]
        while events[-1] not in (b"data: [DONE]", b""):
            events.append(self.event())
        return events

    def close(self) -> None:
        """Hang up, as a client that goes away does."""
        self.response.close()
        self.connection.close()


# Tests -----------------------------------------------------------------------


def test_the_sdk_gets_answers_whole_and_streamed(server, model):
    """Greedy: the same text whole and streamed; max_completion_tokens ends
    it with `length`; include_usage adds the usage chunk."""
    client = sdk(server, "ben")
    whole = client.chat.completions.create(
        model=model, messages=HELLO, max_completion_tokens=12, temperature=0
    )
    text = whole.choices[0].message.content
    assert (whole.choices[0].finish_reason, whole.usage.completion_tokens) == ("length", 12)
    assert whole.id == f"chatcmpl-{whole._request_id}"

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=HELLO,
            max_completion_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert (chunks[-1].choices, chunks[-1].usage.completion_tokens) == ([], 12)


def test_a_stop_string_ends_the_reply_before_it_and_a_seed_repeats_sampling(server, model):
    client = sdk(server, "ben")
    whole = client.chat.completions.create(
        model=model, messages=HELLO, max_completion_tokens=12, temperature=0
    )
    text = whole.choices[0].message.content
    stop = text[len(text) // 2 :][:2]
    for stream in (False, True):
        stopped = client.chat.completions.create(
            model=model, messages=HELLO, max_completion_tokens=12, temperature=0, stop=[stop], stream=stream
        )
        if stream:
            chunks = list(stopped)
            reply = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish_reason = chunks[-1].choices[0].finish_reason
        else:
            reply, finish_reason = stopped.choices[0].message.content, stopped.choices[0].finish_reason
        assert (reply, finish_reason) == (text[: text.index(stop)], "stop")

    seeded = [
        client.chat.completions.create(model=model, messages=HELLO, max_tokens=8, temperature=1.0, seed=7)
        for _ in range(2)
    ]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content


def test_the_sdk_raises_its_own_errors_for_a_wrong_model_and_a_revoked_key(server, model):
    with pytest.raises(openai.NotFoundError) as wrong:
        sdk(server, "ben").chat.completions.create(model=model + "-x", messages=HELLO)
    assert (wrong.value.code, wrong.value.param) == ("model_not_found", "model")

    client = sdk(server, "spare")
    assert client.models.list().data[0].id == model
    manage_shell(
        server["env"],
        "from generation import services, selectors\n"
        f"services.api_key_revoke(api_key=selectors.api_key_authenticate({server['tokens']['spare']!r}))\n"
        "print('null')",
    )
    with pytest.raises(openai.AuthenticationError) as revoked:
        client.chat.completions.create(model=model, messages=HELLO)
    assert revoked.value.code == "invalid_api_key"


def test_a_client_that_hangs_up_mid_reply_frees_its_slot(server, model):
    """The only slot is taken by a reply of up to 4000 tokens; the client
    reads a little and closes. The next request starts at once, and the
    record says cancelled."""
    client = sdk(server, "ben")
    stream = client.chat.completions.create(model=model, messages=HELLO, stream=True, temperature=0)
    request_id = stream.response.headers["x-request-id"]
    contents = [next(stream).choices[0].delta.content for _ in range(3)]
    assert contents[0] == ""  # the role chunk, then text
    stream.close()
    began = time.monotonic()
    whole = client.chat.completions.create(model=model, messages=HELLO, max_completion_tokens=2)
    assert whole.usage.completion_tokens == 2
    assert time.monotonic() - began < 3
    record = record_of(server, request_id, "cancelled")
    assert (record["source"], record["api_key__name"]) == ("api", "tests")
    assert record["completion_tokens"] < 4000


async def test_the_api_and_the_browser_share_one_queue(server, model):
    """Cap 1: while ann's browser reply runs, ben's two API streams wait at
    positions 1 and 2 (SSE comment lines); the queue is then full (503 with
    Retry-After for cat) and ben is at his API limit (429 with Retry-After,
    which the SDK waits out before its one retry). Ben's first stream hangs
    up while waiting (its record says cancelled) and the second moves up;
    when the browser reply stops, the second runs: role, content, finish,
    [DONE]."""
    url = server["url"]
    cookie = await asyncio.to_thread(login, url, "ann", "pw-ann-4821")
    chat = await ChatSocket.open(url.replace("http://", "ws://") + "/ws/chat/", cookie, origin=url)
    await chat.send("hello")
    while (await chat.receive())["type"] != "started":
        pass

    first = await asyncio.to_thread(RawStream, server, "ben", model=model, max_tokens=3)
    assert first.response.status == 200
    assert first.response.getheader("Content-Type").startswith("text/event-stream")
    assert await asyncio.to_thread(first.next_place) == (1, 1)
    second = await asyncio.to_thread(RawStream, server, "ben", model=model, max_tokens=3)
    assert await asyncio.to_thread(second.next_place) == (2, 2)
    assert await asyncio.to_thread(first.next_place) == (1, 2)

    create = sdk(server, "cat").chat.completions.create
    with pytest.raises(openai.InternalServerError) as full:
        await asyncio.to_thread(create, model=model, messages=HELLO)
    assert (full.value.status_code, full.value.code) == (503, "queue_full")
    assert full.value.response.headers["retry-after"] == str(RETRY_AFTER_QUEUE_FULL_S)

    create = sdk(server, "ben", max_retries=1).chat.completions.create
    began = time.monotonic()
    with pytest.raises(openai.RateLimitError) as limited:
        await asyncio.to_thread(create, model=model, messages=HELLO)
    assert time.monotonic() - began >= RETRY_AFTER_BUSY_S  # the SDK waited as told, then retried
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == str(RETRY_AFTER_BUSY_S)

    first_id = first.response.getheader("X-Request-Id")
    first.close()
    assert await asyncio.to_thread(second.next_place) == (1, 1)
    assert (await asyncio.to_thread(record_of, server, first_id, "cancelled"))["source"] == "api"

    await chat.send_frame({"type": "cancel"})
    while (await chat.receive())["type"] != "done":
        pass
    events = await asyncio.to_thread(second.until_done)
    await chat.close()
    assert events[-1] == b"data: [DONE]"
    # Still waiting, it may have repeated its place (with a newer estimate).
    while events[0].startswith(b": queued position=1 waiting=1"):
        events.pop(0)
    assert all(event.startswith(b"data: {") for event in events[:-1])
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert len({c["id"] for c in chunks}) == 1
    second.close()
