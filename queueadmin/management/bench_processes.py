"""The daphne processes of `bench_chat --processes N` (issue #11).

That view measures what the site-wide queue costs a request: the command
starts N daphne processes of its own on the configured database and Redis
with the site queue (GENERATION_SITE_QUEUE=1, every process admitting
through the same Redis keys) and N more without it (=0, each process its
own queue and cap), all at once so that `--rounds` can alternate between
them, and compares the time from submit to start that the services
themselves stamp on each request. This module starts and stops
those processes and reads those times back from the records they write.
"""

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from queueadmin.selectors import admission_ms_by_request

# scope → GENERATION_SITE_QUEUE: "site" admits through Redis, "process" as
# before issue #11 (the baseline the overhead is measured against).
SCOPES = {"site": "1", "process": "0"}
ANSWER_TIMEOUT_S = 60  # daphne answers before its model loads (on the first request)
RECORDS_TIMEOUT_S = 15  # each process writes its records about every second


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(*, scope: str, prefix: str, index: int) -> dict[str, str]:
    """The environment of daphne process `index` for `scope`: this command's
    own (database, Redis, model), one torch thread unless the environment
    names a count (several processes share the cores), and the admission
    keys under `prefix`, so that no other site's queue is touched."""
    return {
        **os.environ,
        "GENERATION_SITE_QUEUE": SCOPES[scope],
        "GENERATION_ADMISSION_PREFIX": prefix,
        "GENERATION_WORKER_NAME": f"bench-{scope}-{index}",
        "GENERATION_TORCH_THREADS": os.environ.get("GENERATION_TORCH_THREADS") or "1",
    }


def answers(url: str) -> bool:
    """Whether the server at `url` serves its login page now."""
    try:
        urllib.request.urlopen(f"{url}/accounts/login/", timeout=1)
    except OSError:
        return False
    return True


@contextmanager
def daphne(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """Run chatsite under daphne on a free loopback port; yield its base URL
    once it answers, and stop it afterwards. CommandError (with the end of
    its log) if it exits or does not answer within ANSWER_TIMEOUT_S."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daphne_bin = Path(sys.executable).with_name("daphne")
    command = [str(daphne_bin), "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, env=env, cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            while not answers(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text()[-2000:]
                    raise CommandError(f"daphne on port {port} did not start ({log_path}):\n{tail}")
                time.sleep(0.1)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


@contextmanager
def daphne_processes(count: int, *, scope: str) -> Iterator[list[str]]:
    """Start `count` daphne processes for `scope` ("site" or "process"),
    sharing one fresh admission prefix; yield their /ws/chat/ URLs once all
    answer, and stop them afterwards. Their logs go to a temporary folder,
    named on stderr."""
    prefix = f"bench:{secrets.token_hex(4)}:admission"
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-chat-{scope}-"))
    print(f"  {count} daphne processes ({scope} queue), logs in {log_dir}", file=sys.stderr)
    with ExitStack() as stack:
        bases = [
            stack.enter_context(
                daphne(process_env(scope=scope, prefix=prefix, index=i), log_dir / f"daphne-{i}.log")
            )
            for i in range(1, count + 1)
        ]
        yield [f"{base.replace('http', 'ws', 1)}/ws/chat/" for base in bases]


def admission_ms(request_ids: list[str], *, timeout_s: float = RECORDS_TIMEOUT_S) -> list[float]:
    """Milliseconds from submit to start of each of `request_ids`, as the
    services stamped them, once their records are written (waiting up to
    `timeout_s`); requests whose record did not come are left out."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = admission_ms_by_request(request_ids=request_ids)
        if len(found) >= len(set(request_ids)) or time.monotonic() > deadline:
            return list(found.values())
        time.sleep(0.5)


def overhead_rows(rows: list[dict]) -> list[dict]:
    """Per client count: the site queue's p50/p95 from submit to start minus
    per-process admission's (ms), the overhead of global admission. Only the
    WebSocket rows have samples (API answers carry no request id)."""
    by = {(row["scope"], row["clients"]): row for row in rows if row.get("path", "ws") == "ws"}
    overhead = []
    for (scope, clients), site in by.items():
        alone = by.get(("process", clients))
        if scope != "site" or alone is None:
            continue
        differences = {}
        for key in ("p50", "p95"):
            ours, theirs = site[f"admission_{key}_ms"], alone[f"admission_{key}_ms"]
            differences[f"overhead_{key}_ms"] = None if None in (ours, theirs) else round(ours - theirs, 3)
        overhead.append({"clients": clients, **differences})
    return overhead
