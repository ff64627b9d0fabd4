"""Redis restarted under the running stack (its own module, so it runs
after test_load: a process that made a site-queue call while Redis was down
falls back to its own cap until its next probe after the restart, up to
2 s, and a load test started in that window would see more than the site
cap running; see docs/deploy.md. A pooled connection that went stale no
longer does this: its first command is retried on a fresh connection)."""

import subprocess

from tests.e2e.conftest import REDIS_PORT
from tests.e2e.test_faults import open_sockets
from tests.polling import wait_for


def redis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["redis-cli", "-p", str(REDIS_PORT), *args], capture_output=True, text=True)


async def test_redis_restart(stack):
    """While Redis is down, chat on an open socket still works (the channel
    layer is only for broadcasts); once it is back, new connections work."""
    [before] = await open_sockets(stack, ["user56"])
    assert (await before.reply("Before the restart")).terminal["type"] == "done"
    redis("shutdown", "nosave")
    await wait_for(lambda: redis("ping").returncode != 0, timeout=30)
    try:
        assert (await before.reply("While Redis is down")).terminal["type"] == "done"
    finally:
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                str(REDIS_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(stack.folder),
                "--pidfile",
                str(stack.folder / "redis.pid"),
                "--logfile",
                str(stack.folder / "redis.log"),
            ],
            check=True,
        )
    await wait_for(lambda: redis("ping").stdout.strip() == "PONG", timeout=30)
    [after] = await open_sockets(stack, ["user57"])
    assert (await after.reply("After the restart")).terminal["type"] == "done"
    await after.close()
    await before.close()
