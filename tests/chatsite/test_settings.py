"""Settings from the environment: production is safe, development is easy."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "x7Qm2-production-secret-that-is-long-and-random-enough-9fK3pLw8zR4tYv",
    "ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "SECURE_SSL_REDIRECT": "1",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_PROXY_SSL_HEADER": "1",
}


def manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in PRODUCTION and k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_secret_key_required_without_debug():
    env = {**PRODUCTION}
    del env["SECRET_KEY"]
    result = manage("check", **env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_bad_boolean_is_a_clear_error():
    result = manage("check", DEBUG="maybe")
    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_redis_url_selects_the_redis_layer():
    result = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.CHANNEL_LAYERS['default'])",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert "RedisChannelLayer" in result.stdout
    assert "'capacity'" in result.stdout
    assert "'expiry'" in result.stdout


def test_database_url_selects_postgresql():
    result = manage(
        "shell",
        "-c",
        "from django.db import connection; print(connection.vendor)",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
    )
    assert result.stdout.strip().splitlines()[-1] == "postgresql", result.stderr


def test_torch_threads_is_auto_unless_a_count_is_given():
    show = ("shell", "-c", "from django.conf import settings; print(repr(settings.GENERATION_TORCH_THREADS))")
    assert manage(*show, GENERATION_TORCH_THREADS="").stdout.split()[-1] == "'auto'"
    assert manage(*show, GENERATION_TORCH_THREADS="AUTO").stdout.split()[-1] == "'auto'"
    assert manage(*show, GENERATION_TORCH_THREADS="3").stdout.split()[-1] == "3"
    for bad in ("many", "-1"):
        result = manage("check", GENERATION_TORCH_THREADS=bad)
        assert result.returncode != 0
        assert "GENERATION_TORCH_THREADS must be auto or an integer of 0 or more" in result.stderr
