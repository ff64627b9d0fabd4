"""Stop strings on the local backend (issue #12), on the tiny model.

The reply is first generated without a stop string; the stop strings are
then taken from that reply, so each test knows where the text must end.
What a client sees is checked: the streamed tokens and the final text end
right before the stop string, never show any part of it, and the finish
reason is "stop".
"""

import pytest

from tests.generation.test_service import LONG, collect, ready

BUDGET = 24


async def reply(service, **params) -> tuple[list[str], dict]:
    """The streamed token texts and the terminal event of one reply to LONG."""
    events = await collect(service.submit(user_id=1, messages=LONG, max_new_tokens=BUDGET, **params))
    return [e["text"] for e in events if e["type"] == "token"], events[-1]


@pytest.fixture
async def service_and_reply(make_service):
    """A service on the tiny model and its greedy reply to LONG without stop
    strings: (service, the token texts, the whole text)."""
    service = await ready(await make_service(max_new_tokens=BUDGET))
    tokens, done = await reply(service)
    assert done["finish_reason"] == "length" and len(tokens) == BUDGET
    return service, tokens, done["text"]


def spanning(tokens: list[str], first: int, count: int) -> str:
    """From the last character of token `first` to the first of token
    `first + count - 1`: a stop string that only tokens together complete."""
    return tokens[first][-1] + "".join(tokens[first + 1 : first + count - 1]) + tokens[first + count - 1][0]


@pytest.mark.parametrize("kind", ["one token", "three tokens"])
async def test_the_reply_ends_before_the_stop_string(service_and_reply, kind):
    """A stop string the model writes, in one token or spread over three,
    ends the reply with "stop"; neither the stream nor the text holds it or
    any part of it, and the text is all that came before it."""
    service, tokens, text = service_and_reply
    stop = tokens[8] if kind == "one token" else spanning(tokens, 8, 3)
    assert stop.strip() and stop in text
    expected = text[: text.index(stop)]
    streamed, done = await reply(service, stop=("never-written", stop))
    assert done["finish_reason"] == "stop"
    assert done["text"] == "".join(streamed) == expected
    assert len(expected) < len(text) - len(stop)  # it did stop early
    assert done["usage"]["completion_tokens"] < BUDGET


async def test_a_tail_held_back_for_a_stop_string_comes_out_when_none_follows(service_and_reply):
    """A stop string whose start the reply ends with holds that tail back
    while it might complete; when the reply ends without it, the tail is
    sent: the text is whole."""
    service, tokens, text = service_and_reply
    start = tokens[-3][-1] + tokens[-2] + tokens[-1]
    stop = start + "\u2063never written"
    streamed, done = await reply(service, stop=(stop,))
    assert done["finish_reason"] == "length"
    assert done["text"] == "".join(streamed) == text
    # The held-back tail came out together at the end, not token by token.
    assert streamed[-1].endswith(start)


async def test_two_stop_strings_end_at_the_first_written(service_and_reply):
    """With two stop strings in the reply, it ends before the earlier one."""
    service, tokens, text = service_and_reply
    early, late = spanning(tokens, 4, 3), spanning(tokens, 14, 3)
    assert text.index(early) + len(early) < text.index(late)
    streamed, done = await reply(service, stop=(late, early))
    assert done["text"] == "".join(streamed) == text[: text.index(early)]
    # The stopped sequence left the batch cleanly: the next reply is whole.
    assert (await reply(service))[1]["text"] == text
