"""Build the prompt token ids from a conversation with the chat template.

When the whole history does not fit the context window minus the reply's
token budget, the oldest turns are dropped; a system message, if any, stays.
When even the newest user message alone does not fit, the request is refused
as too long rather than silently cut.
"""


class PromptTooLong(Exception):
    """The newest message alone does not fit the model's context."""


def build_prompt(tokenizer, messages: list[dict], budget: int) -> tuple[list[int], int]:
    """Return (prompt ids, number of dropped messages) for at most `budget` tokens.

    `messages` are {"role", "content"} dicts, oldest first, ending with the
    user's new message. Called in the model thread, since it tokenises.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    for start in range(len(turns)):
        # Start each kept history at a user turn so the model never sees an
        # assistant reply without its question.
        if start and turns[start]["role"] != "user":
            continue
        ids = tokenizer.apply_chat_template(system + turns[start:], add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        if len(ids) <= budget:
            return list(ids), start
    raise PromptTooLong(f"The message needs more than the {budget} tokens the model can read.")
