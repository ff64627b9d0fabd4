"""A bad GENERATION_OPENAI_BASE_URL stops chatsite before it serves: a
malformed one when the settings load, an unreachable one at the engine check
(`manage.py check --deploy --tag engine`, which `make run` and
deploy/stack.sh run before daphne), each naming the variable. The commands
that do not serve (`migrate`, `model_folder`) work while the engine is down."""

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatsite.settings import env_http_url
from tests.generation.fake_openai import FakeEngine, free_port

ROOT = Path(__file__).resolve().parents[2]
ENGINE_CHECK = ("manage.py", "check", "--deploy", "--tag", "engine")


async def run_in_checkout(*command: str, **variables) -> tuple[int, str, str]:
    """Run `command` in the checkout with `variables` added to the
    environment; returns (exit status, stdout, stderr). The loop stays free
    to serve a fake engine meanwhile. A command still running after 120 s
    (a server that started when it should have been refused) is killed with
    its children and fails the test."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **variables}
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGTERM)
        await process.wait()
        pytest.fail(f"{' '.join(command)} was still running after 120 s")
    return process.returncode, stdout.decode(), stderr.decode()


async def manage_check(**variables) -> tuple[int, str]:
    """Run the engine check with `variables`; (exit status, stderr)."""
    code, _, stderr = await run_in_checkout(sys.executable, *ENGINE_CHECK, **variables)
    return code, stderr


def unreachable_url() -> str:
    """An engine URL on a loopback port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/v1"


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


async def test_the_engine_check_refuses_an_unreachable_engine_and_passes_a_running_one():
    """The check asks GET /models: nothing listening is an error naming the
    variable, its URL and why; an engine that answers passes."""
    url = unreachable_url()
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


async def test_the_engine_check_warns_of_a_context_setting_beyond_the_engines():
    """GENERATION_OPENAI_CONTEXT_TOKENS above the engine's max_model_len
    (2048 here) is named at the check, with the number that will be used;
    a setting within it says nothing."""
    engine = await FakeEngine().start()
    try:
        code, stderr = await manage_check(
            GENERATION_BACKEND="openai",
            GENERATION_OPENAI_BASE_URL=engine.base_url,
            GENERATION_OPENAI_CONTEXT_TOKENS="8192",
        )
        assert code == 0, stderr
        assert "generation.W001" in stderr and "CONTEXT_TOKENS=8192" in stderr and "using 2048" in stderr
        code, stderr = await manage_check(
            GENERATION_BACKEND="openai",
            GENERATION_OPENAI_BASE_URL=engine.base_url,
            GENERATION_OPENAI_CONTEXT_TOKENS="1024",
        )
        assert code == 0 and "W001" not in stderr, stderr
    finally:
        await engine.stop()


async def test_commands_that_do_not_serve_work_while_the_engine_is_down(tmp_path, tiny_model_dir):
    """`migrate`, a plain `check` and `model_folder` (which `make vllm` runs
    before the engine it starts exists) do not ask the engine."""
    down = {
        "GENERATION_BACKEND": "openai",
        "GENERATION_OPENAI_BASE_URL": unreachable_url(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "GENERATION_MODEL": str(tiny_model_dir),
    }
    for command in (("migrate", "--noinput"), ("check",), ("model_folder",)):
        code, stdout, stderr = await run_in_checkout(sys.executable, "manage.py", *command, **down)
        assert code == 0, f"manage.py {' '.join(command)}: {stderr}"
    assert stdout.strip() == str(tiny_model_dir)


async def test_make_run_refuses_an_unreachable_engine_before_serving(tmp_path):
    """`make run` migrates, then stops at the engine check with the variable
    named; daphne never starts. (-o setup: the tests' venv is installed
    already; make must not reinstall it.)"""
    url = unreachable_url()
    port = free_port()
    code, stdout, stderr = await run_in_checkout(
        "make",
        "-o",
        "setup",
        "run",
        f"PORT={port}",
        GENERATION_BACKEND="openai",
        GENERATION_OPENAI_BASE_URL=url,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    assert code != 0
    assert f"GENERATION_OPENAI_BASE_URL={url}: The model server at {url} cannot be reached" in stderr, stderr
    assert "manage.py check --deploy --tag engine" in stdout, stdout
    assert "daphne" not in stdout.split("check --deploy --tag engine", 1)[1]


async def test_stack_start_refuses_an_unreachable_engine_before_starting_anything(tmp_path):
    """deploy/stack.sh start asks the engine before it starts PostgreSQL,
    Redis, daphne or nginx: refused with the variable named, nothing left
    running."""
    url = unreachable_url()
    code, _, stderr = await run_in_checkout(
        "deploy/stack.sh",
        "start",
        GENERATION_BACKEND="openai",
        GENERATION_OPENAI_BASE_URL=url,
        STACK_DIR=str(tmp_path),
        STACK_PORT=str(free_port()),
        STACK_DAPHNE_PORTS=f"{free_port()} {free_port()}",
        STACK_REDIS_PORT=str(free_port()),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    assert code != 0
    assert f"GENERATION_OPENAI_BASE_URL={url}: The model server at {url} cannot be reached" in stderr, stderr
    assert not list(tmp_path.glob("*.pid")), "something was started"
