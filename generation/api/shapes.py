"""The objects /v1/ answers with, as OpenAI shapes them.

Plain JSON-safe dicts: the model list (`model_list`, `model_card`), a whole
completion (`completion`), and the usage block both kinds of answer share.
A completion and all its stream chunks carry the id "chatcmpl-<request id>",
the id the console and the records know the request by.
"""

from generation.runtime.types import Usage

OWNED_BY = "chatsite"


def model_card(model_id: str, created: int, max_model_len: int = 0) -> dict:
    """One entry of GET /v1/models (and the whole of GET /v1/models/{id});
    `created` is epoch seconds (this process's start). `max_model_len` is
    the model's context window in tokens, as vLLM names it (clients and
    another chatsite's `openai` backend size their prompts by it); left out
    while unknown (0)."""
    card = {"id": model_id, "object": "model", "created": created, "owned_by": OWNED_BY}
    if max_model_len > 0:
        card["max_model_len"] = max_model_len
    return card


def model_list(model_id: str, created: int, max_model_len: int = 0) -> dict:
    """GET /v1/models: the one served model (none for an empty `model_id`)."""
    return {"object": "list", "data": [model_card(model_id, created, max_model_len)] if model_id else []}


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
