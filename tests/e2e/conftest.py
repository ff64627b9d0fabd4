"""The production topology, started once for the end-to-end tests.

`deploy/stack.sh` starts what `make stack` starts: PostgreSQL, a Redis of
its own, two daphne processes and nginx in front. Here it runs on ports of
its own, with a fresh database and the tiny test model, so that the tests
drive the real stack in seconds. Everything stays on loopback.
"""

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from generation.wsclient import ChatSocket, login
from tests.polling import poll

ROOT = Path(__file__).resolve().parents[2]
PORT = 18080
DAPHNE_PORTS = (18001, 18002)
REDIS_PORT = 16380
DATABASE = "chatsite_e2e"
PASSWORD = "e2e-pass-4821"
USERS = [f"user{index}" for index in range(1, 72)]

# All share one password, so one PBKDF2 hash serves them all (each costs
# 0.4 to 1.2 s on this machine); logins through the form check it as usual.
# Each user also gets a logged-in session, as the login form makes one, so
# that tests of many clients need not pay a form login (a PBKDF2 check in the
# stack) per client; the form itself is tested in test_stack.py. It prints
# {name: session key}.
CREATE_USERS = f"""
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.backends.db import SessionStore
User = get_user_model()
hashed = make_password({PASSWORD!r})
User.objects.bulk_create([User(username=name, password=hashed) for name in {USERS!r}])
User.objects.create_superuser("staff", password={PASSWORD!r})
sessions = {{}}
for user in User.objects.filter(username__in={USERS!r}):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    sessions[user.username] = session.session_key
print(json.dumps(sessions))
"""


@dataclass
class Stack:
    """A running stack: where it answers and how to reach its parts."""

    env: dict
    folder: Path
    staff_cookie: str | None = None
    sessions: dict[str, str] = field(default_factory=dict)

    url = f"http://127.0.0.1:{PORT}"
    ws_url = f"ws://127.0.0.1:{PORT}/ws/chat/"

    def cookie(self, user: str) -> str:
        """The Cookie header of `user`'s seeded logged-in session (no form login)."""
        return f"sessionid={self.sessions[user]}"

    def manage(self, *args: str) -> str:
        """Run manage.py against the stack's database and Redis."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def sql(self, query: str, *params) -> list[tuple]:
        """Read the stack's PostgreSQL database directly."""
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={DATABASE}") as connection:
            return connection.execute(query, params).fetchall()

    def set_limits(self, **values: int) -> None:
        """Change the live generation settings the way the console does, and
        wait until every process applies them at the site: each has them, and
        none is in its per-process fallback (after a Redis restart a process
        rejoins the site queue only at its next probe, and until then it
        admits against its own cap, as designed)."""
        self.manage(
            "shell",
            "-c",
            f"from queueadmin.services import generation_settings_change as change; change(user=None, **{values!r})",
        )
        for port in DAPHNE_PORTS:
            poll(lambda port=port: values.items() <= self.own_limits(port).items(), timeout=10)
            poll(lambda port=port: not self.own_status(port)["admission"].get("fallback"), timeout=30)

    def own_limits(self, port: int) -> dict:
        """The limits the daphne process on `port` itself applies (its status.json)."""
        return self.own_status(port)["limits"]

    def own_status(self, port: int) -> dict:
        """The daphne process on `port`'s own entry in its status.json."""
        if self.staff_cookie is None:
            self.staff_cookie = login(self.url, "staff", PASSWORD)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/queue/status.json", headers={"Cookie": self.staff_cookie}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = json.load(response)
        [own] = [worker for worker in payload["workers"] if worker["local"]]
        return own

    def daphne_pid(self, index: int) -> int:
        """The pid of daphne process `index` (1 or 2) as now running."""
        return int((self.folder / f"daphne-{index}.pid").read_text())

    def log(self, name: str) -> str:
        return (self.folder / name).read_text()


async def warm_up(stack: Stack) -> None:
    """Load the model in both processes, so that tests start from a ready stack."""
    cookie = await asyncio.to_thread(login, stack.url, "staff", PASSWORD)
    for port in DAPHNE_PORTS:
        socket = await ChatSocket.open(f"ws://127.0.0.1:{port}/ws/chat/", cookie, origin=stack.url)
        assert (await socket.reply("warm up", timeout=300)).terminal["type"] == "done"
        await socket.close()


@pytest.fixture(scope="session")
def stack(tiny_model_dir, tmp_path_factory):
    """Start the stack on the tiny model; stop it when the session ends."""
    folder = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "STACK_DIR": str(folder),
        "STACK_PORT": str(PORT),
        "STACK_DAPHNE_PORTS": " ".join(map(str, DAPHNE_PORTS)),
        "STACK_REDIS_PORT": str(REDIS_PORT),
        "STACK_DB": DATABASE,
        "GENERATION_MODEL": str(tiny_model_dir),
        "GENERATION_DEVICE": "cpu",
        "GENERATION_MAX_CONCURRENCY": "4",
        "GENERATION_MAX_QUEUE": "16",
        "GENERATION_MAX_NEW_TOKENS": "300",
        # Closed sockets' replies end soon, so the disconnect tests stay
        # short; a re-attach test reconnects well within it.
        "GENERATION_REATTACH_GRACE_S": "2",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DATABASE], check=True)
    subprocess.run([str(ROOT / "deploy/stack.sh"), "start"], env=env, check=True, timeout=300)
    stack_env = {
        **env,
        "DEBUG": "0",
        "SECRET_KEY": (folder / "secret.key").read_text().strip(),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
        "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    running = Stack(env=stack_env, folder=folder)
    try:
        running.sessions = json.loads(running.manage("shell", "-c", CREATE_USERS).strip().splitlines()[-1])
        asyncio.run(warm_up(running))
        yield running
    finally:
        subprocess.run([str(ROOT / "deploy/stack.sh"), "stop"], env=env, check=False)
