"""A bad GENERATION_OPENAI_BASE_URL stops chatsite before it serves: a
malformed one when the settings load, an unreachable one at `manage.py
check` (and `migrate`, so `make run`), each naming the variable."""

import asyncio
import os
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatsite.settings import env_http_url
from tests.generation.fake_openai import FakeEngine, free_port

ROOT = Path(__file__).resolve().parents[2]


async def manage_check(**variables) -> tuple[int, str]:
    """Run `manage.py check` with `variables`; the loop stays free to serve
    a fake engine meanwhile."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **variables}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "check",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, stderr.decode()


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8100/v1",
        "ftp://127.0.0.1/v1",
        "http:///v1",
        "http://127.0.0.1:99999/v1",
        "http://exämple.com/v1",
        "http://127.0.0.1:8100/v1\u200b",
        "http://127.0.0.1 :8100/v1",
        "http://[::1/v1",
        "http://127.0.0.1:8100/v1?key=1",
    ],
)
def test_a_malformed_base_url_is_refused_naming_the_variable(monkeypatch, url):
    """No scheme, another scheme, no host, a bad port, unicode or spaces:
    refused when the settings load, with the variable named."""
    monkeypatch.setenv("GENERATION_OPENAI_BASE_URL", url)
    with pytest.raises(ImproperlyConfigured, match="GENERATION_OPENAI_BASE_URL"):
        env_http_url("GENERATION_OPENAI_BASE_URL")


def test_a_base_url_is_read_without_its_trailing_slash(monkeypatch):
    monkeypatch.setenv("GENERATION_OPENAI_BASE_URL", " https://vllm.internal:8000/v1/ ")
    assert env_http_url("GENERATION_OPENAI_BASE_URL") == "https://vllm.internal:8000/v1"


@pytest.mark.parametrize(
    "url",
    ["http://user:secret@127.0.0.1:8100/v1", "https://secret@vllm.internal/v1", "http://:secret@host/v1"],
)
def test_credentials_in_the_base_url_are_refused_pointing_to_the_key_setting(monkeypatch, url):
    """The URL is shown on the console, in status.json, /metrics and logs: a
    password in it is refused, the message points to the API key setting
    and does not repeat the secret."""
    monkeypatch.setenv("GENERATION_OPENAI_BASE_URL", url)
    with pytest.raises(ImproperlyConfigured) as refused:
        env_http_url("GENERATION_OPENAI_BASE_URL", key_variable="GENERATION_OPENAI_API_KEY")
    message = str(refused.value)
    assert "GENERATION_OPENAI_BASE_URL" in message and "GENERATION_OPENAI_API_KEY" in message
    assert "secret" not in message.replace("user:secret@host", "")


async def test_manage_py_refuses_credentials_in_the_base_url():
    code, stderr = await manage_check(
        GENERATION_BACKEND="openai", GENERATION_OPENAI_BASE_URL="http://admin:hunter2@127.0.0.1:8100/v1"
    )
    assert code != 0
    assert "GENERATION_OPENAI_BASE_URL must not hold a user name or password" in stderr, stderr
    assert "GENERATION_OPENAI_API_KEY" in stderr and "hunter2" not in stderr


async def test_manage_py_refuses_a_malformed_base_url():
    code, stderr = await manage_check(
        GENERATION_BACKEND="openai", GENERATION_OPENAI_BASE_URL="ftp://127.0.0.1/v1"
    )
    assert code != 0
    assert "GENERATION_OPENAI_BASE_URL must be an http:// or https:// URL" in stderr, stderr


async def test_manage_py_check_refuses_an_unreachable_engine_and_passes_a_running_one():
    """The check asks GET /models: nothing listening is an error naming the
    variable, its URL and why; an engine that answers passes."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, stderr = await manage_check(GENERATION_BACKEND="openai", GENERATION_OPENAI_BASE_URL=url)
    assert code != 0
    assert (
        f"GENERATION_OPENAI_BASE_URL={url}: The model server at {url} cannot be reached (connection refused)."
        in stderr
    ), stderr

    engine = await FakeEngine().start()
    try:
        code, stderr = await manage_check(
            GENERATION_BACKEND="openai", GENERATION_OPENAI_BASE_URL=engine.base_url
        )
        assert code == 0, stderr
    finally:
        await engine.stop()
