"""The objects /v1/ answers with, as OpenAI shapes them.

Plain JSON-safe dicts: the model list (`model_list`, `model_card`), a whole
completion (`completion`), and the usage block both kinds of answer share.
A completion and all its stream chunks carry the id "chatcmpl-<request id>",
the id the console and the records know the request by.
"""

from generation.runtime.types import Usage

OWNED_BY = "chatsite"


def model_card(model_id: str, created: int) -> dict:
    """One entry of GET /v1/models (and the whole of GET /v1/models/{id});
    `created` is epoch seconds (this process's start)."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": OWNED_BY}


def model_list(model_id: str, created: int) -> dict:
    """GET /v1/models: the one served model (none for an empty `model_id`)."""
    return {"object": "list", "data": [model_card(model_id, created)] if model_id else []}


def usage(counts: Usage) -> dict:
    """OpenAI's usage block: prompt, completion and total tokens."""
    return {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
    }


def completion(
    *, completion_id: str, created: int, model: str, text: str, finish_reason: str, counts: Usage
) -> dict:
    """A non-streamed answer: a `chat.completion` with one choice and usage."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(counts),
    }
