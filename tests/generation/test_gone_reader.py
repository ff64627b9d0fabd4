"""A reply ends when its reader goes, against a live daphne and real clients.

Two ways a reader leaves that only a real server shows: a client that floods
the socket with junk frames and then closes (the close queues behind the
frames), and a client that freezes without closing (no FIN, no pongs), found
only by daphne's pings. Either way the person must be able to chat again
soon, and the reply must be stored as cancelled. Run under the live lock:
    flock /tmp/chatsite-live.lock .venv/bin/python -m pytest tests/generation/test_gone_reader.py
"""

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import websockets

from generation.wsclient import login
from tests.conftest import build_tiny_model
from tests.live import PING_INTERVAL_S, PING_TIMEOUT_S, ROOT, daphne, live_env, prepare_database
from tests.polling import wait_for

# One person per test, so that a reply one test leaves running (the fault
# itself) cannot make the other's person busy.
FLOODER, FROZEN, PASSWORD = "flooder", "frozen", "reader-pass-123"
SEED = f"""
import json
from django.contrib.auth import get_user_model
get_user_model().objects.create_user({FLOODER!r}, password={PASSWORD!r})
get_user_model().objects.create_user({FROZEN!r}, password={PASSWORD!r})
print(json.dumps({{}}))
"""
# A reply that ends on its own would hide one that outlives its reader, on a
# fast machine sooner: the model below never ends one, and this limit is far
# beyond what any machine writes in the test's time.
MAX_NEW_TOKENS = 500_000
LONG_QUESTION = "Tell me a long story."

# The frozen client: logs in, asks for a reply, says when it started, then
# reads on (answering pings) until the test stops it with SIGSTOP.
FROZEN_CLIENT = """
import asyncio, json, sys
import websockets
from generation.wsclient import login

async def main(url):
    cookie = login(url, sys.argv[2], sys.argv[3])
    ws_url = url.replace("http", "ws", 1) + "/ws/chat/"
    async with websockets.connect(ws_url, additional_headers={"Cookie": cookie}, origin=url) as ws:
        await ws.send(json.dumps({"type": "send", "conversation": None, "content": sys.argv[4]}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "started":
                print(frame["message"], flush=True)

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory):
    """The tiny test model, unable to end a reply on its own: its stop tokens'
    (tied) embeddings are zero, so their logits are 0 while greedy decoding
    always finds a larger one, and its context holds MAX_NEW_TOKENS."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("endless-model"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder)
    stop_ids = {
        model.config.eos_token_id,
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }
    with torch.no_grad():
        for token in stop_ids:
            model.model.embed_tokens.weight[token] = 0
    model.config.max_position_embeddings = 2 * MAX_NEW_TOKENS
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(endless_model, tmp_path_factory):
    """A daphne on the endless model and its SQLite file; yields (base URL,
    database path)."""
    folder = tmp_path_factory.mktemp("gone-reader")
    database = folder / "db.sqlite3"
    env = live_env(database, model=endless_model, GENERATION_MAX_NEW_TOKENS=str(MAX_NEW_TOKENS), DEBUG="1")
    prepare_database(env, SEED)
    with daphne(env, folder / "daphne.log") as url:
        yield url, database


def finished_reply(database, message_id: int) -> tuple[str, int] | None:
    """The (status, completion_tokens) the server stored for a reply, once
    it is no longer generating; None before."""
    connection = sqlite3.connect(database)
    try:
        status, tokens = connection.execute(
            "SELECT status, completion_tokens FROM generation_message WHERE id = ?", (message_id,)
        ).fetchone()
    finally:
        connection.close()
    return None if status == "generating" else (status, tokens)


async def open_chat(url: str, cookie: str):
    return await websockets.connect(
        url.replace("http", "ws", 1) + "/ws/chat/",
        additional_headers={"Cookie": cookie},
        origin=url,
        max_queue=None,
        open_timeout=30,
    )


async def receive_until(connection, *kinds: str, timeout: float = 60) -> dict:
    """The first frame whose type is one of `kinds`."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await connection.recv())
            if frame["type"] in kinds:
                return frame


async def chat_again(url: str, cookie: str, deadline: float) -> float:
    """Ask for a reply from new sockets until one starts rather than being
    `busy`; return when (monotonic) that attempt was sent, since the prefill
    before `started` is not the wait being measured. Fails if an attempt
    sent after `deadline` is still `busy`."""
    while True:
        async with await open_chat(url, cookie) as connection:
            sent_at = time.monotonic()
            await connection.send(json.dumps({"type": "send", "conversation": None, "content": "Me again."}))
            frame = await receive_until(connection, "started", "error")
            if frame["type"] == "started":
                await connection.send(json.dumps({"type": "cancel"}))
                await receive_until(connection, "done")
                return sent_at
            assert frame["code"] == "busy", frame
        assert sent_at < deadline, "still busy: the reply outlived its reader"
        await asyncio.sleep(0.2)


async def test_a_flood_then_a_close_cancels_the_reply_at_once(server):
    """After `started`, 12,000 junk frames and a normal close: the close is
    seen at once, the reply is stored cancelled, and a new socket of the same
    person can chat within a couple of seconds."""
    url, database = server
    cookie = await asyncio.to_thread(login, url, FLOODER, PASSWORD)
    async with await open_chat(url, cookie) as connection:
        await connection.send(json.dumps({"type": "send", "conversation": None, "content": LONG_QUESTION}))
        started = await receive_until(connection, "started")
        for _ in range(12_000):
            await connection.send("{}")
    closed_at = time.monotonic()

    chatting_again = await chat_again(url, cookie, deadline=closed_at + 2)
    print(f"chatting again {chatting_again - closed_at:.2f} s after the close")
    status, tokens = await wait_for(lambda: finished_reply(database, started["message"]), timeout=5)
    print(f"reply stored {status} after {tokens} tokens")
    assert status == "cancelled"
    assert tokens < MAX_NEW_TOKENS


async def test_a_frozen_client_is_let_go_after_a_missed_ping(server):
    """A client that stops without closing (SIGSTOP: no FIN, no pongs) holds
    its person at `busy` only until daphne's ping goes unanswered."""
    url, database = server
    client = subprocess.Popen(
        [sys.executable, "-c", FROZEN_CLIENT, url, FROZEN, PASSWORD, LONG_QUESTION],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 120)
        message_id = int(line)
        os.kill(client.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()

        cookie = await asyncio.to_thread(login, url, FROZEN, PASSWORD)
        # daphne looks for idle sockets every 2 s, then waits for the pong.
        limit = PING_INTERVAL_S + 2 + PING_TIMEOUT_S + 2
        chatting_again = await chat_again(url, cookie, deadline=frozen_at + limit)
        print(f"chatting again {chatting_again - frozen_at:.2f} s after the client froze")
        status, tokens = await wait_for(lambda: finished_reply(database, message_id), timeout=5)
        print(f"reply stored {status} after {tokens} tokens")
        assert status == "cancelled"
        assert tokens < MAX_NEW_TOKENS
    finally:
        client.kill()  # SIGKILL ends a stopped process too
        client.wait(10)
