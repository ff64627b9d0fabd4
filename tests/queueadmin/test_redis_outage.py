"""Limits saved while Redis is down reach every process once it is back.

The saved row is the truth: a process started during the outage runs it,
and the processes that missed the broadcast apply it when Redis returns.
This test runs a redis-server of its own on a free port, because it stops
it; the shared Redis is never touched. The processes re-read the row only
every 60 s here, so what they apply within seconds came from reading it
after the gap in the broadcast.
"""

import subprocess
import sys
import time

import pytest

from tests.live import ROOT, daphne, daphnes, live_env, prepare_database, redis_server
from tests.polling import poll
from tests.queueadmin.test_two_processes import SEED, own_cap, status

SAVE = "from queueadmin import services; services.generation_settings_change(user=None, max_concurrency=2)"
BOUND_S = 10  # after Redis is back, every process runs the saved version within this


@pytest.fixture
def own_redis(tmp_path):
    """This test's own Redis, started; stopped at teardown whatever happened."""
    with redis_server(tmp_path) as server:
        yield server


def test_limits_saved_while_redis_is_down_reach_every_process(own_redis, tiny_model_dir, tmp_path):
    """Cap 4 (environment) → 2 saved during an outage: a process started
    during it runs 2 at once, and both older processes run 2 within 10 s
    of Redis coming back."""
    env = live_env(
        tmp_path / "db.sqlite3",
        model=tiny_model_dir,
        REDIS_URL=f"redis://127.0.0.1:{own_redis.port}/0",
        GENERATION_TORCH_THREADS="1",
        GENERATION_MAX_CONCURRENCY="4",
        QUEUEADMIN_SETTINGS_CHECK_S="60",
    )
    session = prepare_database(env, SEED)["boss"]
    manage = [sys.executable, str(ROOT / "manage.py")]

    def peers(base: str) -> list:
        return (status(f"{base}/admin/queue/status.json", session) or {"workers": []})["workers"]

    def caps(*bases: str) -> list:
        return [own_cap(f"{base}/admin/queue/status.json", session) for base in bases]

    with daphnes(
        {name: {**env, "GENERATION_WORKER_NAME": name} for name in ("alpha", "beta")}, tmp_path
    ) as bases:
        alpha, beta = bases["alpha"], bases["beta"]
        poll(lambda: caps(alpha, beta) == [4, 4], timeout=60)
        # Each hears the other: both have joined the groups.
        poll(lambda: all(len(peers(base)) == 2 for base in (alpha, beta)), timeout=30)

        own_redis.stop()
        subprocess.run([*manage, "shell", "-c", SAVE], env=env, cwd=ROOT, check=True)
        with daphne({**env, "GENERATION_WORKER_NAME": "gamma"}, tmp_path / "gamma.log") as gamma:
            # Started during the outage: the saved row, not the environment.
            started_during = settle(lambda: caps(gamma), [2])

        own_redis.start()
        back_again = settle(lambda: caps(alpha, beta), [2, 2])
    assert (started_during, back_again) == ([2], [2, 2])


def settle(read, expected, timeout: float = BOUND_S):
    """Read until `expected` comes or `timeout` passes; return the last reading."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value
