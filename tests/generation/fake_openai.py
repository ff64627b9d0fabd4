"""A small OpenAI-compatible HTTP server on a real socket, for the faults a
real engine will not produce on demand: malformed streams, 429s, a
connection closed by the client. A test double only for those; the happy
path runs against a real vLLM in the end-to-end test.

Plain asyncio streams, one request per connection ("Connection: close"),
running on the test's own loop. `GET /v1/models` lists `models` (or is answered by `listing`); each
`POST /v1/chat/completions` is answered by the handler registered under
the content of the request's last message (`reply`), else by `default`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Busy"}


def free_port() -> int:
    """A port nothing listens on (right now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chunk(content: str | None = None, finish_reason: str | None = None, **extra) -> dict:
    """One chat.completion.chunk, as vLLM sends it."""
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "smollm2",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk `include_usage` asks for: no choices, the counts."""
    return {
        **chunk(),
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def write_head(writer, status: int, headers: dict[str, str]) -> None:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()


def respond(status: int, body: bytes | str, headers: dict[str, str] | None = None) -> Handler:
    """A whole response at once."""
    data = body.encode() if isinstance(body, str) else body

    async def handler(reader, writer):
        await write_head(writer, status, {"Content-Length": str(len(data)), **(headers or {})})
        writer.write(data)
        await writer.drain()

    return handler


def sse(events: list[dict | str], done: bool = True) -> Handler:
    """A 200 event stream of `events` (dicts as JSON, strings as they are)."""
    body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return respond(200, body + ("data: [DONE]\n\n" if done else ""), {"Content-Type": "text/event-stream"})


class FakeEngine:
    """The server; `requests` holds each chat request's JSON body."""

    def __init__(self):
        self.models: list[dict] = [{"id": "smollm2", "object": "model", "max_model_len": 2048}]
        self.replies: dict[str, Handler] = {}
        self.default: Handler = sse([chunk("Hi", "stop"), usage_chunk(5, 1)])
        self.requests: list[dict] = []
        self.listing: Handler | None = None  # answers GET /v1/models instead of `models`
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, port: int = 0) -> FakeEngine:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self._writers:
                writer.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
            body = json.loads(await reader.readexactly(length)) if length else None
            if method == "GET" and path.endswith("/models") and self.listing:
                await self.listing(reader, writer)
            elif method == "GET" and path.endswith("/models"):
                await respond(200, json.dumps({"object": "list", "data": self.models}))(reader, writer)
            elif method == "POST" and path.endswith("/chat/completions"):
                self.requests.append(body)
                last = body["messages"][-1]["content"]
                await self.replies.get(last, self.default)(reader, writer)
            else:
                await respond(404, "no such path")(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
