"""The bytes of a streamed answer (server-sent events), as OpenAI clients read them.

A stream is, in order: SSE comment lines while the request waits
(`: queued position=3 waiting=12 eta_s=40`, which clients ignore and which
keep proxies from timing out), the first chunk with `delta.role`, chunks with
`delta.content`, the chunk that ends the choice with its `finish_reason`,
then (when `stream_options.include_usage` asked) one chunk with
`choices: []` and `usage`, then `data: [DONE]`. An error after the stream
began is one `data: {"error": …}` event followed by `[DONE]`.
"""

import json

from generation.api import shapes
from generation.runtime.types import ModelState, Usage

DONE = b"data: [DONE]\n\n"


def event(data: dict) -> bytes:
    """One `data:` event holding `data` as compact JSON (one line: JSON
    escapes newlines in strings)."""
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def comment(text: str) -> bytes:
    """An SSE comment line (clients skip it); `text` must hold no newline."""
    return b": " + text.encode() + b"\n\n"


def queued(
    position: int, waiting: int, *, eta_s: int | None = None, model_state: ModelState = ModelState.READY
) -> bytes:
    """The comment that tells a waiting client what the chat's `queued`
    frame tells a person: its place (`position` 1 is next, of `waiting`),
    then `eta_s=N` (about N seconds until it starts) once the service can
    estimate it, and `model=loading` while the model loads or the engine is
    not reached yet (nothing starts before then)."""
    text = f"queued position={position} waiting={waiting}"
    if eta_s is not None:
        text += f" eta_s={eta_s}"
    if model_state is not ModelState.READY:
        text += f" model={model_state}"
    return comment(text)


KEEPALIVE = comment("keep-alive")


class Chunks:
    """The `chat.completion.chunk` events of one stream; each method returns
    the bytes of one event. With `include_usage`, every chunk carries
    `"usage": null` and `usage()` adds the last one, as OpenAI sends them."""

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool):
        self.completion_id, self.created, self.model = completion_id, created, model
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict], **extra) -> bytes:
        data = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            data["usage"] = None
        return event({**data, **extra})

    def _choice(self, delta: dict, finish_reason: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def role(self) -> bytes:
        """The first chunk: the assistant's role and empty content."""
        return self._choice({"role": "assistant", "content": ""})

    def content(self, text: str) -> bytes:
        """A piece of the reply."""
        return self._choice({"content": text})

    def finish(self, finish_reason: str) -> bytes:
        """The chunk that ends the choice: an empty delta and why it ended."""
        return self._choice({}, finish_reason)

    def usage(self, counts: Usage) -> bytes:
        """The usage chunk, after the choice ended: no choices, the counts."""
        return self._chunk([], usage=shapes.usage(counts))
