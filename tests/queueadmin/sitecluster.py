"""Daphne processes sharing one site queue, and chat clients that drive them.

The live tests of the site-wide queue (issue #11) run several daphne
processes on the tiny model, a PostgreSQL database and a redis-server of the
test's own (the channel layer's groups and the admission keys are then the
test's alone, and the outage test may stop it). PostgreSQL, not SQLite:
with three processes writing at once, SQLite answers "database is locked"
now and then, and a process's recorder drops the batch of records it could
not write, which the tests would see as a request stored zero times. A `Chat` is one person's
socket on one process; it reads every frame as it comes, with the time it
came, so that a test can both wait for a frame and look back at all of them.
What the processes stored is read back through the ORM (`stored_records`).
"""

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import websockets

from generation.wsclient import TERMINAL, ChatSocket
from tests.live import daphnes, live_env, manage_shell, seed_logged_in_users
from tests.polling import poll

USERS = [f"u{index}" for index in range(20)]
STAFF = "boss"
SEED = seed_logged_in_users(USERS, staff=[STAFF])
LEASE_S = 2.0  # GENERATION_ADMISSION_LEASE_S for these processes
RECORDS = """
import json
from queueadmin.models import GenerationRecord
stamp = lambda moment: moment and moment.timestamp()
print(json.dumps([
    {"request": r.request_id, "worker": r.worker, "started": stamp(r.started_at),
     "finished": stamp(r.finished_at), "outcome": r.outcome, "finish_reason": r.finish_reason,
     "error_code": r.error_code}
    for r in GenerationRecord.objects.all()
]))
"""


@contextmanager
def fresh_database():
    """A new, empty PostgreSQL database on the test server (127.0.0.1:5432,
    as the README's test prerequisites say); yield its URL; dropped after."""
    name = f"chatsite_site_{uuid.uuid4().hex[:12]}"
    server = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(["createdb", *server, name], check=True)
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(["dropdb", *server, "--if-exists", "--force", name], check=False)


def site_env(database_url: str, redis_port: int, model_dir: Path, **overrides: str) -> dict:
    """The environment of every process: cap 2 site-wide, replies that run
    until cancelled (the tiny model does not stop on "hello"), short leases,
    and admission keys under a prefix of this test's own."""
    settings = {
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GENERATION_TORCH_THREADS": "1",
        "GENERATION_MAX_CONCURRENCY": "2",
        "GENERATION_MAX_NEW_TOKENS": "4000",
        "GENERATION_ADMISSION_LEASE_S": str(LEASE_S),
        "GENERATION_ADMISSION_PREFIX": f"test:{uuid.uuid4().hex}",
        "QUEUEADMIN_SETTINGS_CHECK_S": "30",
    }
    # The caller's overrides win (a dict merge: the same name twice in one
    # call would be a TypeError).
    return live_env(database_url, model=model_dir, **(settings | overrides))


@contextmanager
def processes(env: dict, folder: Path, names: list[str], staff_session: str):
    """Run one daphne per name (its GENERATION_WORKER_NAME; log `<name>.log`
    in `folder`); yield {name: base URL} once every one has its model ready
    (asked as staff, with `staff_session`)."""
    with daphnes({name: {**env, "GENERATION_WORKER_NAME": name} for name in names}, folder) as bases:
        wait_ready(bases.values(), staff_session)
        yield bases


def own_status(base: str, session: str) -> dict | None:
    """The process's own entry in its console payload (status.json), or None."""
    request = urllib.request.Request(
        f"{base}/admin/queue/status.json", headers={"Cookie": f"sessionid={session}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            payload = json.load(response)
    except OSError:
        return None
    return next((worker for worker in payload["workers"] if worker["local"]), None)


def wait_ready(bases, session: str, timeout: float = 120) -> None:
    """Until every process at `bases` (URLs) has its model loaded; asking
    status.json also starts a process's generation service."""

    def ready(base: str) -> bool:
        status = own_status(base, session)
        return status is not None and status["model"]["state"] == "ready"

    poll(lambda: all([ready(base) for base in bases]), timeout=timeout, interval=0.2)


def stored_records(env: dict, requests: set[str], timeout: float = 30) -> list[dict]:
    """Every GenerationRecord, once those of `requests` (ids) are all written
    (each process writes its records every second); times are epoch seconds."""

    def read() -> list[dict] | None:
        rows = manage_shell(env, RECORDS)
        return rows if requests <= {row["request"] for row in rows} else None

    return poll(read, timeout=timeout, interval=0.5)


def most_at_once(records: list[dict]) -> int:
    """The largest number of records whose [started, finished] overlap."""
    # At one instant an end counts before a start: the slot was free again.
    edges = sorted(
        [(row["started"], 1) for row in records if row["started"]]
        + [(row["finished"], -1) for row in records if row["started"]]
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def started_out_of_turn(records: list[dict], cap: int) -> list[str]:
    """The requests of `records` (in arrival order) that started while an
    earlier arrival waited with no slot kept for it.

    FIFO with several processes: the site queue keeps a slot for the head of
    the queue, and its owner starts it when it next claims; so when two
    slots free at once, a later arrival on a quicker process may start a few
    milliseconds before an earlier one. What must never happen is that a
    later request takes the slot an earlier one waits for: at the moment
    request j starts, the replies running (j included) plus the earlier
    arrivals not yet started must fit in the cap.
    """
    late = []
    for j, row in enumerate(records):
        at = row["started"]
        running = sum(1 for other in records if other["started"] <= at < other["finished"])
        waiting_before = sum(1 for other in records[:j] if other["started"] > at)
        if running + waiting_before > cap:
            late.append(row["request"])
    return late


def log_says(folder: Path, names: list[str], words: str) -> bool:
    """Whether the log of every process in `names` contains `words`."""
    return all(words in (folder / f"{name}.log").read_text() for name in names)


class Chat:
    """One person's /ws/chat/ socket on one process. Every frame is kept in
    `frames` as (monotonic time, frame); `next` waits for the next one."""

    def __init__(self, socket: ChatSocket, process: str):
        self.socket, self.process = socket, process
        self.frames: list[tuple[float, dict]] = []
        self._unread: asyncio.Queue[dict] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, bases: dict, process: str, session: str) -> "Chat":
        """Connect to `process` (a name in `bases`) with `session`'s cookie."""
        base = bases[process]
        socket = await ChatSocket.open(
            base.replace("http", "ws", 1) + "/ws/chat/", f"sessionid={session}", base
        )
        return cls(socket, process)

    async def _read(self) -> None:
        # Read all the time: a reply that holds its slot streams many tokens,
        # and an unread socket would stall the server's sending.
        while True:
            try:
                frame = await self.socket.receive(timeout=3600)
            except websockets.ConnectionClosed:
                return  # its process stopped (or was killed)
            self.frames.append((time.monotonic(), frame))
            self._unread.put_nowait(frame)

    async def next(self, *kinds: str, timeout: float = 60) -> dict:
        """The next unread frame of one of `kinds`, or a terminal one."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self._unread.get()
                if frame["type"] in kinds or frame["type"] in TERMINAL:
                    return frame

    async def ask(self, content: str = "hello") -> dict:
        """Send a message; return its first frame after `accepted`: queued,
        started or an error. Once it came, the site queue knows the request."""
        await self.socket.send(content)
        return await self.next("queued", "started")

    async def streams(self, after: float, timeout: float = 30) -> dict:
        """A token frame that came after `after` (monotonic), or the end."""
        while True:
            frame = await self.next("token", timeout=timeout)
            if frame["type"] in TERMINAL or self.time_of(frame) > after:
                return frame

    async def end(self) -> dict:
        """Cancel the reply (started or waiting); return its terminal frame."""
        await self.socket.send_frame({"type": "cancel"})
        return await self.next()

    def time_of(self, frame: dict) -> float:
        """When `frame` came (monotonic)."""
        return next(moment for moment, seen in self.frames if seen is frame)

    @property
    def request(self) -> str:
        """The id of the last request this socket made."""
        return next(frame for _, frame in reversed(self.frames) if frame["type"] == "accepted")["request"]

    def positions(self) -> list[int]:
        """The positions of every queued frame, in order."""
        return [frame["position"] for _, frame in self.frames if frame["type"] == "queued"]

    def requests(self) -> list[str]:
        """The ids of every request this socket made, in order."""
        return [frame["request"] for _, frame in self.frames if frame["type"] == "accepted"]

    def endings(self) -> dict[str, int]:
        """{request: terminal frames seen for it}."""
        counts: dict[str, int] = {}
        for _, frame in self.frames:
            if frame["type"] in TERMINAL:
                counts[frame["request"]] = counts.get(frame["request"], 0) + 1
        return counts

    async def close(self) -> None:
        self._reader.cancel()
        await self.socket.close()
