"""Two daphne processes sharing Redis and a database follow one settings change.

Each process runs the tiny model with REDIS_URL set (a redis-server of this
module's own, so that no other test's flush can touch it); a settings change made
by a third process (a service call through manage.py shell, as the console
form would) reaches both within a second, and each sees the other's status,
also while a staff console socket is open on one of them.

The processes re-read the saved row only every 30 s here, so what these
tests see within a second came over the channel layer.
"""

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import pytest
import websockets

from generation.wsclient import TERMINAL, ChatSocket
from tests.live import ROOT, daphnes, live_env, prepare_database, redis_server, seed_logged_in_users
from tests.polling import poll

SEED = seed_logged_in_users([], staff=["boss"])
CHANGE = "from queueadmin import services; services.generation_settings_change(user=None, max_concurrency=3)"


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    """Two daphne processes, "alpha" and "beta", for the whole module;
    yields (env, {name: status url}, session, {name: base url})."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    with redis_server(tmp_path) as redis:
        yield from _cluster(tiny_model_dir, tmp_path, redis.port)


def _cluster(tiny_model_dir, tmp_path, redis_port: int):
    env = live_env(
        tmp_path / "db.sqlite3",
        model=tiny_model_dir,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        GENERATION_MAX_CONCURRENCY="1",
        GENERATION_MAX_NEW_TOKENS="4000",  # runs until cancelled; within the console's bound
        GENERATION_TORCH_THREADS="1",
        QUEUEADMIN_SETTINGS_CHECK_S="30",
    )
    session = prepare_database(env, SEED)["boss"]
    with daphnes(
        {name: {**env, "GENERATION_WORKER_NAME": name} for name in ("alpha", "beta")}, tmp_path
    ) as bases:
        urls = {name: f"{url}/admin/queue/status.json" for name, url in bases.items()}
        yield env, urls, session, bases


def status(url: str, session: str) -> dict | None:
    request = urllib.request.Request(url, headers={"Cookie": f"sessionid={session}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.load(response)
    except OSError:
        return None  # not listening yet


def caps(payload: dict | None) -> dict:
    """{worker: cap} of the ready workers a payload shows."""
    if not payload:
        return {}
    return {w["worker"]: w["cap"] for w in payload["workers"] if w["model"]["state"] == "ready"}


def test_a_change_reaches_both_processes_within_a_second(cluster):
    """Both processes apply cap 1 → 3 within a second and report it for each other."""
    env, urls, session, _ = cluster

    def every_process_shows(expected: dict) -> bool:
        # Ask every process each time: a process starts its service on its first request.
        return all([caps(status(url, session)) == expected for url in urls.values()])

    poll(lambda: every_process_shows({"alpha": 1, "beta": 1}), timeout=90)

    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", CHANGE], env=env, cwd=ROOT, check=True
    )
    changed = time.monotonic()
    for name, url in urls.items():
        # Each process's own entry is read live from its service.
        poll(lambda url=url, name=name: caps(status(url, session)).get(name) == 3, timeout=1.0)
    assert time.monotonic() - changed < 1.0
    poll(lambda: every_process_shows({"alpha": 3, "beta": 3}), timeout=2)
    payload = status(urls["alpha"], session)
    # Both admit through the site queue (REDIS_URL): one cap of 3 for the site, not 3 + 3.
    assert payload["admission"] == {"scope": "site", "fallback": [], "message": ""}
    assert payload["total"]["cap"] == payload["total"]["site_cap"] == 3
    assert [w["local"] for w in payload["workers"]] == [True, False]


def own_cap(url: str, session: str) -> int | None:
    """The cap the process serving `url` applies itself."""
    payload = status(url, session)
    return next((w["cap"] for w in payload["workers"] if w["local"]), None) if payload else None


async def test_a_console_socket_does_not_starve_its_process(cluster):
    """With a staff console open on alpha for 3 s, a console cancel of a reply
    running on alpha stops it, and a settings change and beta's status still
    reach alpha (channels-redis has one receive loop per process)."""
    env, urls, session, bases = cluster
    cookie = f"sessionid={session}"
    both_ready = lambda: all(len(caps(status(url, session))) == 2 for url in urls.values())  # noqa: E731
    await asyncio.to_thread(poll, both_ready, 120)

    console = await websockets.connect(
        bases["alpha"].replace("http", "ws") + "/ws/queue/",
        additional_headers={"Cookie": cookie},
        origin=bases["alpha"],
    )
    answers: asyncio.Queue = asyncio.Queue()

    async def drain():
        async for frame in console:
            frame = json.loads(frame)
            if frame["type"] != "queue.status":
                answers.put_nowait(frame)

    drainer = asyncio.create_task(drain())
    chat = None
    try:
        await asyncio.sleep(3)
        chat = await ChatSocket.open(
            bases["alpha"].replace("http", "ws") + "/ws/chat/", cookie, bases["alpha"]
        )
        await chat.send("hello")
        while (event := await chat.receive(timeout=60))["type"] != "token":
            if event["type"] == "started":
                request = event["request"]
        await console.send(json.dumps({"type": "cancel", "request": request}))
        assert await asyncio.wait_for(answers.get(), 5) == {"type": "cancel.sent", "request": request}
        # A deadline per read: tokens keep coming until the cancel is applied.
        deadline = time.monotonic() + 5
        while (event := await chat.receive(timeout=deadline - time.monotonic()))["type"] not in TERMINAL:
            pass
        assert event["type"] == "done" and event["finish_reason"] == "cancelled", event

        target = own_cap(urls["alpha"], session) + 1
        change = CHANGE.replace("max_concurrency=3", f"max_concurrency={target}")
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(ROOT / "manage.py"), "shell", "-c", change],
            env=env,
            cwd=ROOT,
            check=True,
        )
        await asyncio.to_thread(poll, lambda: own_cap(urls["alpha"], session) == target, 1.5)
        assert "beta" in caps(status(urls["alpha"], session)), "alpha no longer hears beta"
    finally:
        drainer.cancel()
        await console.close()
        if chat is not None:
            await chat.close()
