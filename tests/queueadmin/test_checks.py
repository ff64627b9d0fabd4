"""Limits from the environment that contradict each other stop `manage.py check`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.generation.fake_openai import free_port

ROOT = Path(__file__).resolve().parents[2]


def check(**variables) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **variables}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("GENERATION_MAX_NEW_TOKENS", "9000", "At most 4096 tokens"),
        ("GENERATION_MAX_NEW_TOKENS", "0", "greater than or equal to 1"),
        ("GENERATION_MAX_CONCURRENCY", "0", "greater than or equal to 1"),
        ("GENERATION_MAX_ACTIVE_API_PER_USER", "0", "greater than or equal to 1"),
        ("CHAT_MAX_MESSAGE_CHARS", "0", "at least 1"),
    ],
)
def test_contradicting_limits_from_the_environment_are_refused(variable, value, reason):
    """An operator who sets a limit the console would refuse learns it from
    `manage.py check` (and `migrate`, so `make run`), with the variable named,
    instead of a site where every reply is cut or every message times out."""
    result = check(**{variable: value})
    assert result.returncode != 0
    assert f"{variable}={value}" in result.stderr and reason in result.stderr, result.stderr


def test_the_default_limits_pass():
    result = check()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("context", "bound"), [("1024", 512), ("0", 2048)])
def test_with_a_remote_engine_the_reply_budget_is_checked_against_its_context(context, bound):
    """With GENERATION_BACKEND=openai the check bounds GENERATION_MAX_NEW_TOKENS
    by the remote engine's context (GENERATION_OPENAI_CONTEXT_TOKENS, else the
    4096 the backend assumes), not by the local model's 8192."""
    result = check(
        GENERATION_BACKEND="openai",
        GENERATION_OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",  # not asked for the bound
        GENERATION_OPENAI_CONTEXT_TOKENS=context,
        GENERATION_MAX_NEW_TOKENS="3000",
    )
    assert result.returncode != 0
    assert f"GENERATION_MAX_NEW_TOKENS=3000: At most {bound} tokens" in result.stderr, result.stderr
