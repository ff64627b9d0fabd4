"""Live daphne servers for tests that need a real HTTP/WebSocket server.

The browser tests and the two-process test run daphne as a subprocess, on
a database of their own that is migrated and seeded through manage.py, so
they are independent of pytest-django's test database. Tests of several
processes run a redis-server of their own (`redis_server`), which no other
test flushes and which they may stop.
"""

import atexit
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import redis

from tests.polling import poll

ROOT = Path(__file__).resolve().parents[1]
# As deployed (Makefile, deploy/stack.sh, the systemd unit; docs/deploy.md).
PING_INTERVAL_S = 5
PING_TIMEOUT_S = 5


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_env(database: Path | str, *, model: Path | None = None, **settings: str) -> dict[str, str]:
    """The environment of a chatsite process that a live test starts (daphne,
    manage.py, bench commands): this process's environment with chatsite's
    settings module and `database`, a SQLite file's path or a database URL
    (postgres://...). With `model`, that model folder on the CPU
    (GENERATION_MODEL, GENERATION_DEVICE=cpu); one torch thread
    (GENERATION_TORCH_THREADS=1). `settings` are further
    variables, as strings; they win over the ones above."""
    url = database if isinstance(database, str) and "://" in database else f"sqlite:///{database}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatsite.settings", "DATABASE_URL": url}
    # One torch thread, as in the test process (tests/conftest.py): "auto"
    # would time the engine at a server's start, on a machine busy with tests,
    # and store that pick for the real servers of this machine.
    env["GENERATION_TORCH_THREADS"] = "1"
    if model is not None:
        env |= {"GENERATION_MODEL": str(model), "GENERATION_DEVICE": "cpu"}
    return env | settings


def prepare_database(env: dict, seed: str) -> dict:
    """Migrate the database `env` names, run the `seed` code in manage.py
    shell, and return the JSON object its last printed line holds.

    A SQLite file that does not exist yet is a copy of one migrated once per
    test session (`migrated_sqlite`): the same tables, without paying for a
    `migrate` in every live test."""
    url = env.get("DATABASE_URL", "")
    target = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if target is not None and not target.exists():
        shutil.copyfile(migrated_sqlite(env), target)
    else:
        migrate(env)
    return manage_shell(env, seed)


def migrate(env: dict) -> None:
    """Run `manage.py migrate` on the database `env` names."""
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True)


@functools.cache
def _template_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="chatsite-migrated-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def migrated_sqlite(env: dict) -> Path:
    """A SQLite file with every migration applied and nothing else, made by
    `manage.py migrate` on the first call of the process (with `env`, on a
    file of its own) and reused after; callers copy it, never write it."""
    template = _template_folder() / "migrated.sqlite3"
    if not template.exists():
        partial = template.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        migrate({**env, "DATABASE_URL": f"sqlite:///{partial}"})
        partial.rename(template)
    return template


def manage(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `manage.py *args` on the settings `env` names and return what it
    printed (text, captured); the caller judges the return code."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def manage_shell(env: dict, code: str):
    """Run `code` in manage.py shell on the database `env` names; return
    the JSON value its last printed line holds."""
    ran = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(ran.stdout.strip().splitlines()[-1])


def seed_logged_in_users(users: list[str], staff: list[str] = ()) -> str:
    """Code for `prepare_database`'s seed: create `users` (and `staff`, with
    is_staff) and a logged-in session for each; it prints {name: session key}.
    A session made this way is what the login form makes, without the form.

    Their passwords ("pw-<name>-4821") are hashed with 1,000 PBKDF2
    iterations, not the default 1,000,000 (0.4 to 1.2 s each here): they log
    in by session. A login with the password still works (Django reads the
    iterations from the hash, and upgrades it)."""
    return f"""
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.sessions.backends.db import SessionStore
hasher = PBKDF2PasswordHasher()
sessions = {{}}
for name, is_staff in [*((name, False) for name in {list(users)!r}), *((name, True) for name in {list(staff)!r})]:
    user = get_user_model().objects.create_user(name, is_staff=is_staff)
    user.password = hasher.encode("pw-" + name + "-4821", hasher.salt(), iterations=1000)
    user.save(update_fields=["password"])
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    sessions[name] = session.session_key
print(json.dumps(sessions))
"""


@contextmanager
def daphne(env: dict, log_path: Path, *, application: str = "chatsite.asgi:application"):
    """Run chatsite under daphne on a free port; yield its base URL once it
    answers, and stop it afterwards. `application`: the ASGI app daphne
    serves (a test's wrapper of chatsite's, e.g. tests/browser/gated_asgi.py)."""
    with daphne_process(env, log_path, application=application) as (url, _):
        yield url


@contextmanager
def daphne_process(
    env: dict,
    log_path: Path,
    *,
    wait: bool = True,
    port: int | None = None,
    application: str = "chatsite.asgi:application",
):
    """As `daphne`, but yield (base URL, its subprocess.Popen), for a test
    that kills it; stopping a process that is already dead is harmless.
    With `wait=False` it yields as soon as daphne is started, before it
    answers (`wait_answering` waits); `port`: a free one when None."""
    port = port or free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("daphne")),
                "--ping-interval",
                str(PING_INTERVAL_S),
                "--ping-timeout",
                str(PING_TIMEOUT_S),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                application,
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            if wait:
                wait_answering(url, server, log_path)
            yield url, server
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


def wait_answering(url: str, server: subprocess.Popen, log_path: Path) -> None:
    """Wait until the daphne `server` at `url` answers a page (about 30 s at
    most); fails with its log (`log_path`) should it exit meanwhile."""
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/accounts/login/", timeout=1)
            return
        except OSError:
            assert server.poll() is None, log_path.read_text()
            time.sleep(0.1)


@contextmanager
def daphnes(envs: dict[str, dict], folder: Path):
    """Start one daphne per name in `envs` (its environment; its log
    `<name>.log` in `folder`), all at once; yield {name: base URL} once every
    one answers, and stop them afterwards. Started together, none waits for
    the one before it to import and answer (seconds each on two busy cores)."""
    ports: set[int] = set()
    while len(ports) < len(envs):  # none has bound its port yet: no two alike
        ports.add(free_port())
    with ExitStack() as stack:
        started = {
            name: stack.enter_context(daphne_process(env, folder / f"{name}.log", wait=False, port=port))
            for (name, env), port in zip(envs.items(), ports, strict=True)
        }
        for name, (url, server) in started.items():
            wait_answering(url, server, folder / f"{name}.log")
        yield {name: url for name, (url, _) in started.items()}


class RedisServer:
    """A throw-away redis-server on `port` that keeps nothing on disk; it can
    be stopped and started again on the same port, as an outage would."""

    def __init__(self, port: int, folder: Path):
        self.port, self.folder, self.process = port, folder, None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
        )
        poll(self.answers, timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def answers(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=1).ping()
        except redis.RedisError:
            return False


@contextmanager
def redis_server(folder: Path):
    """Run a RedisServer on a free port (skip the test without redis-server);
    yield it started, and stop it afterwards."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
