"""Load through the stack: 40 clients at once against cap 4 and queue 16."""

import asyncio

import pytest

from tests.e2e.test_faults import LONG, open_sockets
from tests.polling import wait_for

CLIENTS = 40
CAP, QUEUE = 4, 16


def records(stack, request_ids):
    return stack.sql(
        "SELECT request_id, worker, enqueued_at, started_at, finished_at, outcome, error_code, completion_tokens "
        "FROM queueadmin_generationrecord WHERE request_id = ANY(%s)",
        request_ids,
    )


def peak_overlap(intervals) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def should_be_rejected(row, same_worker) -> bool:
    """What the queue allows: refused only when, at its arrival, every slot
    was busy and the queue was full (judged from the other records)."""
    arrived = row[2]
    accepted = [r for r in same_worker if r[5] != "rejected"]
    running = sum(1 for r in accepted if r[3] is not None and r[3] <= arrived < r[4])
    waiting = sum(1 for r in accepted if r[2] < arrived and (r[3] is None or r[3] > arrived))
    return running >= CAP and waiting >= QUEUE


async def finish(socket):
    """Read one reply to its terminal event; then make sure no second one comes."""
    events = []
    while not events or events[-1]["type"] not in ("done", "error"):
        events.append(await socket.receive(120))
    with pytest.raises(TimeoutError):
        await socket.receive(0.5)
    return events


async def test_forty_clients(stack):
    stack.set_limits(max_concurrency=CAP, max_queue_size=QUEUE, max_new_tokens=300)
    sockets = await open_sockets(stack, [f"user{index}" for index in range(1, CLIENTS + 1)])
    await asyncio.gather(*(socket.send(LONG) for socket in sockets))
    seen = await asyncio.gather(*(finish(socket) for socket in sockets))
    await asyncio.gather(*(socket.close() for socket in sockets))

    terminals = {events[0]["request"]: events[-1] for events in seen}
    assert len(terminals) == CLIENTS, "every client got its own request id"
    assert all(sum(e["type"] in ("done", "error") for e in events) == 1 for events in seen)
    assert {t["type"] for t in terminals.values()} <= {"done", "error"}
    assert {t["code"] for t in terminals.values() if t["type"] == "error"} <= {"queue_full"}

    ids = list(terminals)
    await wait_for(lambda: len(records(stack, ids)) >= CLIENTS, timeout=30)
    rows = records(stack, ids)
    # One record per request: none lost, none counted twice.
    assert sorted(row[0] for row in rows) == sorted(ids)
    for row in rows:
        terminal = terminals[row[0]]
        if terminal["type"] == "done":
            assert row[5] == "completed"
            assert row[7] == terminal["usage"]["completion_tokens"]
        else:
            assert (row[5], row[6]) == ("rejected", "queue_full")

    workers = {row[1] for row in rows}
    assert workers == {"daphne-1", "daphne-2"}
    for worker in workers:
        same_worker = [row for row in rows if row[1] == worker]
        intervals = [(row[3], row[4]) for row in same_worker if row[3] is not None]
        assert peak_overlap(intervals) <= CAP
        for row in same_worker:
            assert (row[5] == "rejected") == should_be_rejected(row, same_worker), row
