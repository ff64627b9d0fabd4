"""Malformed frames through nginx: each gets `invalid`, nothing else breaks."""

import asyncio
import json
import time

import psutil

from generation.consumers import FRAME_RATE_PER_S
from generation.wsclient import ChatSocket

CORPUS = {
    "invalid JSON": '{"type": "send", "content": ',
    "binary frame": b"\x00\x01\x02 binary",
    "unknown type": json.dumps({"type": "shout", "content": "hi"}),
    "wrong field types": json.dumps({"type": "send", "conversation": "7", "content": ["hi"]}),
    "1 MB of content": json.dumps({"type": "send", "conversation": None, "content": "a" * 1_000_000}),
    "null bytes": json.dumps({"type": "send", "conversation": None, "content": "a\x00b"}),
    "lone surrogate": '{"type": "send", "conversation": null, "content": "a\\ud800b"}',
    "deeply nested JSON": "[" * 200_000 + "]" * 200_000,
}
ROUNDS = 30


def daphne_rss_mb(stack) -> float:
    return sum(psutil.Process(stack.daphne_pid(index)).memory_info().rss for index in (1, 2)) / 2**20


async def send_corpus(socket) -> None:
    """Send the corpus once, each frame answered `invalid` for what it is; then
    wait long enough that the socket's rate limit (which has its own tests)
    never drops a frame of the next round: the round's frames are refilled
    at FRAME_RATE_PER_S, counting the time the round itself took."""
    began = time.monotonic()
    for name, frame in CORPUS.items():
        await socket.send_frame(frame)
        event = await socket.receive(30)
        assert (event["type"], event["code"]) == ("error", "invalid"), name
        assert event["message"] and "slow down" not in event["message"], name
    await asyncio.sleep(max(0.0, len(CORPUS) / FRAME_RATE_PER_S - (time.monotonic() - began)))


async def test_malformed_frames_get_invalid_and_memory_stays_flat(stack):
    socket = await ChatSocket.open(stack.ws_url, stack.cookie("user3"), origin=stack.url)
    for _ in range(5):  # warm-up: allocators and caches reach their working size
        await send_corpus(socket)
    before = daphne_rss_mb(stack)
    for _ in range(ROUNDS):
        await send_corpus(socket)
    growth = daphne_rss_mb(stack) - before
    # 30 rounds push about 40 MB through the servers; keeping any of it would show.
    assert growth < 25, f"daphne RSS grew by {growth:.0f} MB"
    # The same socket still chats.
    reply = await socket.reply("Still there?")
    assert reply.terminal["type"] == "done"
    await socket.close()
    [(count,)] = stack.sql(
        "SELECT count(*) FROM generation_message m JOIN generation_conversation c ON c.id = m.conversation_id "
        "JOIN auth_user u ON u.id = c.owner_id WHERE u.username = 'user3'"
    )
    assert count == 2  # the one real question and its reply; no malformed frame was stored
