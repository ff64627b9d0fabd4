"""Load through the stack: 40 clients at once against cap 4 and queue 16,
both site-wide: the stack's two processes share one queue (issue #11)."""

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


def in_site_at_arrival(row, rows) -> int:
    """How many accepted requests, on any process, were running or waiting
    when `row` arrived (judged from the records' times)."""
    arrived = row[2]
    accepted = [r for r in rows if r[5] != "rejected" and r is not row]
    return sum(1 for r in accepted if r[2] < arrived < r[4])


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

    assert {row[1] for row in rows} == {"daphne-1", "daphne-2"}
    # The cap is the site's: never more than 4 running on both together.
    assert peak_overlap([(row[3], row[4]) for row in rows if row[3] is not None]) <= CAP
    # queue_full is the site's too: a request was refused only when the site
    # held its cap and a full queue, and accepted only when it did not. The
    # records stamp arrival in each process, and two arrivals within a
    # millisecond on two processes may reach Redis in the other order:
    # hence one request of slack each way.
    for row in rows:
        if row[5] == "rejected":
            assert in_site_at_arrival(row, rows) >= CAP + QUEUE - 1, row
        else:
            assert in_site_at_arrival(row, rows) <= CAP + QUEUE, row
    assert sum(row[5] == "rejected" for row in rows) >= 1, "40 clients overflow a site of 4 + 16"
