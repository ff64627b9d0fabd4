"""The stack under faults: clients that leave, a process killed, Redis restarted."""

import asyncio
import contextlib
import itertools
import os
import signal
import urllib.request

import pytest
import websockets

from generation.replies import PARTIAL_SAVE_INTERVAL_S
from generation.wsclient import ChatSocket, login
from tests.e2e.conftest import DAPHNE_PORTS, PASSWORD
from tests.polling import wait_for

# The seeded tiny model does not stop on this prompt, so with a large token
# budget a reply runs until it is cancelled or cut off.
LONG = "hello"
LEASE_S = 5  # the site queue's default lease (README, GENERATION_ADMISSION_LEASE_S)


async def open_sockets(stack, names):
    """Chat sockets through nginx for `names`, on their seeded sessions."""
    return await asyncio.gather(
        *(ChatSocket.open(stack.ws_url, stack.cookie(name), origin=stack.url) for name in names)
    )


async def events_until(socket, kinds, timeout=60, into=None):
    """Read events until one of `kinds`; return them (also appended to `into`)."""
    seen = [] if into is None else into
    async with asyncio.timeout(timeout):
        while not seen or seen[-1]["type"] not in kinds:
            seen.append(await socket.receive(timeout))
    return seen


async def streamed_reply(socket, content: str) -> dict:
    """Ask; once the reply streams, stop it, as the tiny model would write the
    whole budget of long_replies (4000 tokens); return its terminal event."""
    await socket.send(content)
    stopped = False
    while True:
        event = await socket.receive(60)
        if event["type"] == "token" and not stopped:
            await socket.send_frame({"type": "cancel"})
            stopped = True
        if event["type"] in ("done", "error"):
            return event


@pytest.fixture
def long_replies(stack):
    """Replies long enough to be interrupted, ten at once on the site (its
    two processes share one queue and cap); the stack's limits restored after."""
    stack.set_limits(max_concurrency=10, max_queue_size=16, max_new_tokens=4000)
    yield
    stack.set_limits(max_concurrency=4, max_queue_size=16, max_new_tokens=300)


async def test_disconnects_free_slots_and_store_cancelled(stack, long_replies):
    """10 clients close mid-stream and 10 while queued: the slots are freed,
    the queue drains, and their messages end cancelled."""
    names = [f"user{index}" for index in range(21, 41)]
    sockets = await open_sockets(stack, names)
    for socket in sockets:
        await socket.send(LONG)
    # A site-wide cap of 10 over the two processes: 10 replies stream, 10 wait.
    seen = [[] for _ in sockets]
    readers = [
        asyncio.create_task(events_until(s, {"token"}, into=events))
        for s, events in zip(sockets, seen, strict=True)
    ]
    await wait_for(lambda: sum(reader.done() for reader in readers) >= 10, timeout=30)
    await asyncio.sleep(0.5)  # every slot is taken: nobody else starts
    assert sum(reader.done() for reader in readers) == 10
    for reader in readers:
        reader.cancel()
    streaming = [i for i, reader in enumerate(readers) if not reader.cancelled() and reader.done()]
    queued = [i for i in range(len(sockets)) if i not in streaming]

    def statuses(indexes):
        """(question status, reply statuses) of the given clients' conversations."""
        questions = [seen[i][0]["user_message"] for i in indexes]
        rows = stack.sql(
            "SELECT m.role, m.status FROM generation_message m WHERE m.conversation_id IN "
            "(SELECT conversation_id FROM generation_message WHERE id = ANY(%s))",
            questions,
        )
        asked = sorted(status for role, status in rows if role == "user")
        replies = sorted(status for role, status in rows if role == "assistant")
        return asked, replies

    # The waiting ones leave first (were the streaming ones first, freed slots
    # could start a waiting reply before its own socket's close arrives).
    await asyncio.gather(*(sockets[i].close() for i in queued))
    expected = (["cancelled"] * 10, [])
    with contextlib.suppress(AssertionError):  # the assert below shows what differs
        await wait_for(lambda: statuses(queued) == expected, timeout=30)
    assert statuses(queued) == expected
    await asyncio.gather(*(sockets[i].close() for i in streaming))
    expected = (["complete"] * 10, ["cancelled"] * 10)
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: statuses(streaming) == expected, timeout=30)
    assert statuses(streaming) == expected

    # Every slot is free again: ten new clients all stream. One may first
    # read "queued" for a moment: a process holds a spare slot for its next
    # request while nobody waits, and gives it back when a request of the
    # other process waits (docs/deploy.md, "spare slots"); a slot leaked by
    # the closes above would keep a client waiting for good instead.
    fresh = await open_sockets(stack, [f"user{index}" for index in range(41, 51)])
    for socket in fresh:
        await socket.send(LONG)
    seen = await asyncio.gather(*(events_until(s, {"token", "error", "done"}) for s in fresh))
    assert [events[-1]["type"] for events in seen] == ["token"] * 10
    await asyncio.gather(*(socket.close() for socket in fresh))


async def test_reloads_through_nginx_reattach_to_the_reply(stack, long_replies):
    """Each new socket of a session reaches the same process through nginx,
    so a page reloaded mid-reply, again and again, re-attaches: it gets the
    text so far and the rest live; Stop from the last one ends it."""
    cookie = await asyncio.to_thread(login, stack.url, "user71", PASSWORD)
    socket = await ChatSocket.open(stack.ws_url, cookie, origin=stack.url)
    await socket.send(LONG)
    first = await events_until(socket, {"token"})
    accepted, started = first[0], first[1]
    texts = []
    for _ in range(3):
        await socket.close()
        socket = await socket.reconnect()
        await socket.send_frame({"type": "open", "conversation": accepted["conversation"]})
        attached = await socket.receive()
        assert (attached["type"], attached["request"], attached["message"]) == (
            "attached",
            accepted["request"],
            started["message"],
        )
        texts.append(attached["text"])
        await events_until(socket, {"token"})
    assert texts[0] and all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(texts))
    await socket.send_frame({"type": "cancel"})
    done = (await events_until(socket, {"done"}))[-1]
    assert done["finish_reason"] == "cancelled"
    [(content,)] = stack.sql("SELECT content FROM generation_message WHERE id = %s", started["message"])
    assert content.startswith(texts[-1])
    await socket.close()


def generating_worker(stack, message_id):
    [(worker,)] = stack.sql("SELECT worker FROM generation_message WHERE id = %s", message_id)
    return worker


async def test_killed_process_clients_reconnect_and_replies_end_interrupted(stack, long_replies):
    """kill -9 of one daphne during generation: its clients' sockets close and
    reconnect to the other process through nginx; their partial replies are
    marked interrupted when the process restarts; the other process's clients
    are unaffected."""
    # nginx sends each session's sockets to one process, chosen by a hash of
    # its cookie: people are added until both processes have some.
    sockets, replies, workers = [], {}, {}
    for index in range(61, 71):
        if len(sockets) >= 4 and set(workers.values()) == {"daphne-1", "daphne-2"}:
            break
        [socket] = await open_sockets(stack, [f"user{index}"])
        await socket.send(LONG)
        seen = await events_until(socket, {"token"})
        sockets.append(socket)
        replies[socket] = next(e["message"] for e in seen if e["type"] == "started")
        workers[socket] = generating_worker(stack, replies[socket])
    assert set(workers.values()) == {"daphne-1", "daphne-2"}, "nginx spreads sessions over both processes"
    victims = [s for s in sockets if workers[s] == "daphne-1"]
    survivors = [s for s in sockets if workers[s] == "daphne-2"]

    # The survivors keep reading, as a browser does, while the rest goes on.
    survivor_events = [[] for _ in survivors]
    readers = [
        asyncio.create_task(events_until(socket, {"done", "error"}, timeout=120, into=seen))
        for socket, seen in zip(survivors, survivor_events, strict=True)
    ]
    # Long enough for a partial save of the replies' text (every 3 s), which
    # is what a killed process leaves of them.
    await asyncio.sleep(PARTIAL_SAVE_INTERVAL_S + 0.5)
    killed_pid = stack.daphne_pid(1)
    os.kill(killed_pid, signal.SIGKILL)
    for socket in victims:
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await events_until(socket, {"done", "error"}, timeout=30)
    # The victims reconnect at once through nginx, which skips the dead
    # process, and chat on the other one.
    reconnected = [await socket.reconnect() for socket in victims]
    replies_after = await asyncio.gather(
        *(streamed_reply(socket, "Are you there?") for socket in reconnected)
    )
    for socket, terminal in zip(reconnected, replies_after, strict=True):
        if terminal.get("code") == "busy":
            # The site-wide per-user limit counts the killed process's reply
            # until its lease runs out (GENERATION_ADMISSION_LEASE_S, 5 s).
            await asyncio.sleep(LEASE_S)
            terminal = await streamed_reply(socket, "Are you there?")
        assert terminal["type"] == "done"
        assert generating_worker(stack, terminal["message"]) == "daphne-2"
        await socket.close()
    # The survivors' replies streamed on all along; stopped now, they end well.
    for socket in survivors:
        await socket.send_frame({"type": "cancel"})
    await asyncio.gather(*readers)
    for seen in survivor_events:
        done = seen[-1]
        assert done["type"] == "done"
        assert sum(event["type"] == "token" for event in seen) > 1
        [(status,)] = stack.sql("SELECT status FROM generation_message WHERE id = %s", done["message"])
        assert status == {"cancelled": "cancelled"}.get(done["finish_reason"], "complete")

    # The supervisor restarts daphne-1; its first request marks its
    # predecessor's replies interrupted.
    await wait_for(lambda: stack.daphne_pid(1) != killed_pid, timeout=30)
    await wait_for(lambda: port_answers(DAPHNE_PORTS[0]), timeout=60)
    victim_replies = [replies[s] for s in victims]
    await wait_for(
        lambda: (
            {
                status
                for (status,) in stack.sql(
                    "SELECT status FROM generation_message WHERE id = ANY(%s)", victim_replies
                )
            }
            == {"interrupted"}
        ),
        timeout=30,
    )
    kept = stack.sql("SELECT content FROM generation_message WHERE id = ANY(%s)", victim_replies)
    assert all(content for (content,) in kept), "an interrupted reply keeps its text so far"
    await asyncio.gather(*(socket.close() for socket in sockets))


def port_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2)
    except OSError:
        return False
    return True
