"""/v1/ in front of the openai backend before the engine was first reached:
the served model's name is the engine's (GENERATION_OPENAI_MODEL unset),
so a call that comes first waits for the engine to name it, up to
MODEL_NAME_WAIT_S, rather than failing at once. The engine is the small
fake OpenAI server (fake_openai.py) on the test's own loop, so a view that
blocked the loop would keep the engine from answering too."""

import asyncio
import json
import time

import httpx2
import openai
import pytest
from django.test import AsyncClient

from generation import services
from generation.api import errors, views
from generation.runtime.backends import openai as backend_module
from generation.runtime.registry import get_service
from tests.generation.fake_openai import FakeEngine, free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice_token(alice) -> str:
    return services.api_key_create(user=alice, name="script")[1]


@pytest.fixture
async def remote_site(settings, tiny_model_dir, monkeypatch):
    """This process's service on the openai backend, pointed at a port where
    no engine listens yet; yields a function that starts the engine there.
    The backend probes every 0.1 s instead of 2 s."""
    monkeypatch.setattr(backend_module, "PROBE_INTERVAL_S", 0.1)
    port = free_port()
    settings.GENERATION_BACKEND = "openai"
    settings.GENERATION_OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    settings.GENERATION_OPENAI_MODEL = ""
    settings.GENERATION_OPENAI_TOKENIZER = str(tiny_model_dir)
    settings.GENERATION_OPENAI_CONNECT_TIMEOUT_S = 1
    engines = []

    async def start_engine() -> FakeEngine:
        engines.append(await FakeEngine().start(port))
        return engines[-1]

    service = get_service()
    yield start_engine
    service.stop()
    for engine in engines:
        await engine.stop()


def chat(token: str):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hello"}]}
    return AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_a_first_call_waits_for_the_engine_to_name_its_model(remote_site, alice_token):
    """The engine comes up a second after the calls: a chat completion and
    the model list both wait for it and answer, rather than 503 at once."""
    asked = time.monotonic()
    calls = asyncio.gather(
        chat(alice_token),
        AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {alice_token}"}),
    )
    await asyncio.sleep(1)
    await remote_site()
    completion, listing = await asyncio.wait_for(calls, 10)
    assert completion.status_code == 200, completion.content
    assert completion.json()["model"] == "smollm2"
    assert completion.json()["choices"][0]["message"]["content"] == "Hi"
    assert [m["id"] for m in listing.json()["data"]] == ["smollm2"]
    assert time.monotonic() - asked >= 1


async def test_an_engine_never_reached_is_503_unavailable_after_the_wait(
    remote_site, alice_token, monkeypatch
):
    """No engine within MODEL_NAME_WAIT_S (30 s; shortened here): 503
    `unavailable` with Retry-After, in OpenAI's shape."""
    assert views.MODEL_NAME_WAIT_S == 30
    monkeypatch.setattr(views, "MODEL_NAME_WAIT_S", 0.5)
    asked = time.monotonic()
    response = await chat(alice_token)
    assert time.monotonic() - asked >= 0.5
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert response["Retry-After"] == "10"


async def test_the_sdk_waits_as_retry_after_says_and_gets_its_answer(remote_site, alice_token, monkeypatch):
    """The official SDK, in process (its HTTP client on the ASGI app): the
    503 `unavailable` is its InternalServerError; allowed a retry, it waits
    Retry-After (1 s here, not its own half-second back-off) and the retry,
    made once the engine is up, is answered."""
    from chatsite.asgi import application

    monkeypatch.setattr(views, "MODEL_NAME_WAIT_S", 0.3)
    monkeypatch.setattr(errors, "RETRY_AFTER_UNAVAILABLE_S", 1)

    def sdk(max_retries: int) -> openai.AsyncOpenAI:
        transport = httpx2.ASGITransport(app=application)
        return openai.AsyncOpenAI(
            base_url="http://testserver/v1",
            api_key=alice_token,
            max_retries=max_retries,
            http_client=httpx2.AsyncClient(transport=transport),
        )

    hello = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.InternalServerError) as unavailable:
        await sdk(0).chat.completions.create(model="smollm2", messages=hello)
    assert (unavailable.value.status_code, unavailable.value.code) == (503, "unavailable")

    asked = time.monotonic()
    call = asyncio.ensure_future(sdk(1).chat.completions.create(model="smollm2", messages=hello))
    await asyncio.sleep(0.5)  # the first try was refused; the SDK waits out Retry-After
    await remote_site()
    completion = await asyncio.wait_for(call, 10)
    assert completion.choices[0].message.content == "Hi"
    assert time.monotonic() - asked >= 0.3 + 1
