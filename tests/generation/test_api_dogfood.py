"""Dog-food: one chatsite in front of another chatsite's /v1/.

Chatsite B runs the tiny model in process and answers the OpenAI API;
chatsite A runs `GENERATION_BACKEND=openai` with B's /v1 as its engine and
an API key made on B with `manage.py apikey create`. Each has its own
SQLite database and no Redis. A person chatting on A in the browser (the
chat socket) and a script using the `openai` SDK against A's /v1 both get
B's replies, and both halves keep their records: A's as a chat and an API
request, B's as API requests on the key A uses. Two live daphnes: run
under the live-test lock (tests/live.py).
"""

import asyncio

import openai

from generation.wsclient import ChatSocket, login
from tests.live import daphne, live_env, manage, manage_shell, prepare_database
from tests.polling import poll

PROMPT = "Tell me about the sea"
MAX_NEW_TOKENS = 16

SEED_B = """
import json
from django.contrib.auth import get_user_model
from generation import services
bea = get_user_model().objects.create_user("bea", password="pw-bea-4821")
print(json.dumps(services.api_key_create(user=bea, name="direct")[1]))
"""

SEED_A = """
import json
from django.contrib.auth import get_user_model
from generation import services
ann = get_user_model().objects.create_user("ann", password="pw-ann-4821")
print(json.dumps(services.api_key_create(user=ann, name="script")[1]))
"""

RECORDS = """
import json
from queueadmin.models import GenerationRecord
print(json.dumps(list(GenerationRecord.objects.order_by("enqueued_at").values(
    "source", "outcome", "completion_tokens", "api_key__name", "user__username"))))
"""


def site_env(folder, name: str, **settings: str) -> dict:
    """The environment of one chatsite: its own SQLite file, no Redis."""
    return live_env(
        folder / f"{name}.sqlite3",
        REDIS_URL="",
        GENERATION_MAX_NEW_TOKENS=str(MAX_NEW_TOKENS),
        DEBUG="1",
        **settings,
    )


def records(env: dict, count: int) -> list[dict]:
    """The site's records once `count` are stored (the statistics writer
    flushes every second)."""
    return poll(lambda: (found := manage_shell(env, RECORDS)) and len(found) >= count and found, timeout=15)


async def chat_on(url: str, username: str, content: str) -> tuple[str, dict]:
    """Log in on `url` as the browser does and chat: the streamed text and
    the reply's terminal event."""
    cookie = await asyncio.to_thread(login, url, username, f"pw-{username}-4821")
    socket = await ChatSocket.open(url.replace("http://", "ws://") + "/ws/chat/", cookie, origin=url)
    try:
        reply = await socket.reply(content, timeout=60)
    finally:
        await socket.close()
    return reply.text, reply.terminal


def test_one_chatsite_chats_through_another(tiny_model_dir, tmp_path):
    """A's chat and A's /v1 both answer with B's greedy reply, and both sites
    record what went through them. (A chat reply's sampling is the service's
    default, greedy; A passes it on to B as temperature 0.)"""
    env_b = site_env(tmp_path, "b", GENERATION_MODEL=str(tiny_model_dir), GENERATION_DEVICE="cpu")
    direct_token = prepare_database(env_b, SEED_B)
    created = manage(env_b, "apikey", "create", "bea", "--name", "chatsite-a")
    assert created.returncode == 0, created.stderr
    key_for_a = created.stdout.strip()

    with daphne(env_b, tmp_path / "b.log") as url_b:
        # What B itself answers, greedy, on a key of its own.
        direct = openai.OpenAI(base_url=f"{url_b}/v1", api_key=direct_token, max_retries=0, timeout=60)
        model = direct.models.list().data[0].id
        expected = direct.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            max_completion_tokens=MAX_NEW_TOKENS,
            temperature=0,
        )
        expected_text = expected.choices[0].message.content
        assert expected_text

        env_a = site_env(
            tmp_path,
            "a",
            GENERATION_BACKEND="openai",
            GENERATION_OPENAI_BASE_URL=f"{url_b}/v1",
            GENERATION_OPENAI_API_KEY=key_for_a,
            GENERATION_OPENAI_TOKENIZER=str(tiny_model_dir),
        )
        token_a = prepare_database(env_a, SEED_A)
        with daphne(env_a, tmp_path / "a.log") as url_a:
            # The first contact: A's service starts, reaches B and names its
            # model while this request waits.
            via_a = openai.OpenAI(base_url=f"{url_a}/v1", api_key=token_a, max_retries=0, timeout=60)
            assert [m.id for m in via_a.models.list().data] == [model]
            text, done = asyncio.run(chat_on(url_a, "ann", PROMPT))
            assert (done["type"], text) == ("done", expected_text)

            streamed = via_a.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": PROMPT}],
                max_completion_tokens=MAX_NEW_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(streamed)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text
            assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens

            on_a = records(env_a, 2)
        on_b = records(env_b, 3)

    tokens = expected.usage.completion_tokens
    assert [(r["source"], r["outcome"], r["user__username"], r["api_key__name"]) for r in on_a] == [
        ("chat", "completed", "ann", None),
        ("api", "completed", "ann", "script"),
    ]
    assert [r["completion_tokens"] for r in on_a] == [tokens, tokens]
    assert [(r["source"], r["outcome"], r["user__username"], r["api_key__name"]) for r in on_b] == [
        ("api", "completed", "bea", "direct"),
        ("api", "completed", "bea", "chatsite-a"),
        ("api", "completed", "bea", "chatsite-a"),
    ]
    assert [r["completion_tokens"] for r in on_b] == [tokens] * 3
