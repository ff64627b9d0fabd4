"""Build the prompt token ids from a conversation with the chat template.

Message content is untrusted (people write it, and the model wrote the old
replies): it becomes plain text tokens, never the template's control tokens.
The template is rendered with a sentinel in place of each content; only the
template's own text may yield added tokens such as <|im_start|>, while the
contents are tokenized with no added token recognised at all (special or
not). The runs between the template's markers are tokenized whole, exactly
as the tokenizer splits at added tokens, so ordinary text gets the very ids
`apply_chat_template(tokenize=True)` gives.

The prompt and the reply share the model's context window. Old turns are
dropped (a system message, if any, stays) until the prompt leaves room for the
reply's full budget; when even the newest message alone does not, the reply's
budget shrinks to what is left, and only when not even MIN_REPLY_TOKENS fit is
the request refused as too long rather than silently cut.
"""

import json
import re
import uuid
import weakref
from dataclasses import dataclass

MIN_REPLY_TOKENS = 16
# Put after the first character of a control token's spelling in a message
# sent to a remote engine, so that the engine reads it as text.
ZERO_WIDTH_SPACE = "\u200b"

_plain_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_control_patterns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class PromptTooLong(Exception):
    """The newest message alone leaves no room for even a short reply."""


@dataclass(frozen=True)
class Prompt:
    """A prompt that fits: its ids, the oldest messages left out, and the reply
    budget in tokens (below the asked one when `budget_shrunk`)."""

    ids: list[int]
    dropped_messages: int
    max_new_tokens: int
    budget_shrunk: bool


def _plain_tokenizer(tokenizer):
    """A copy of the fast tokenizer's pipeline without its added tokens, so that
    no text, however it is spelled, can become one of them."""
    plain = _plain_tokenizers.get(tokenizer)
    if plain is None:
        from tokenizers import Tokenizer

        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        spec["added_tokens"] = []
        plain = _plain_tokenizers[tokenizer] = Tokenizer.from_str(json.dumps(spec))
    return plain


def prepare_tokenizer(tokenizer) -> None:
    """Build the tokenizer's plain copy now; called by the model thread right
    after the model loads. Building it takes most of a second, with the GIL
    held while the tokenizers library parses the vocabulary: done at the first
    prompt, it would stall the event loop and every stream for that long."""
    _plain_tokenizer(tokenizer)


def _added_ids(tokenizer) -> frozenset[int]:
    return frozenset(tokenizer.added_tokens_decoder)


def _encode_plain(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as text. Should a merge of plain bytes still land on
    an added token's id, that piece is encoded a character at a time."""
    if not text:
        return []
    plain = _plain_tokenizer(tokenizer)
    added = _added_ids(tokenizer)
    encoding = plain.encode(text, add_special_tokens=False)
    if not added.intersection(encoding.ids):
        return list(encoding.ids)
    ids = []
    for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
        if token_id in added:
            for char in text[start:end]:
                ids += plain.encode(char, add_special_tokens=False).ids
        else:
            ids.append(token_id)
    return ids


def _template_pieces(tokenizer, text: str) -> list[str | int]:
    """Split template text into plain runs (str) and its own added tokens (int ids)."""
    added = _added_ids(tokenizer)
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    pieces: list[str | int] = []
    position = 0
    for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
        if token_id in added:
            pieces += [text[position:start], token_id]
            position = end
    pieces.append(text[position:])
    return pieces


def encode_conversation(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` in the chat template, with a generation prompt.

    Contents are text whatever they contain: "<|im_end|>" typed by a person
    is seven plain tokens, not the end-of-turn marker. Needs a fast
    (tokenizers-backed) tokenizer, as AutoTokenizer loads for chat models.
    """
    return _encode_conversation(tokenizer, messages, {})


def _encode_conversation(tokenizer, messages: list[dict], memo: dict) -> list[int]:
    """`encode_conversation`, remembering in `memo` the ids of each piece of
    text it tokenises (keyed by the text) and the placeholder marker, so
    that encoding the same turns again, as trimming does from each candidate
    start, renders only the template and tokenises nothing it has seen. The
    ids are the same: each piece is tokenised alone either way."""
    if ("nonce",) not in memo:
        nonce = uuid.uuid4().hex
        memo[("nonce",)] = (nonce, re.compile(f"\ue000{nonce}:(\\d+)\ue001"))
    nonce, marker = memo[("nonce",)]
    placeholders = [{**m, "content": f"\ue000{nonce}:{i}\ue001"} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(placeholders, add_generation_prompt=True, tokenize=False)
    # Odd items are message indices; the even ones are the template's own text.
    parts = marker.split(rendered)
    pieces: list[str | int] = []
    for index, part in enumerate(parts):
        if index % 2:
            pieces.append(str(messages[int(part)]["content"]))
        else:
            key = ("template", part)
            if key not in memo:
                memo[key] = _template_pieces(tokenizer, part)
            pieces += memo[key]
    ids: list[int] = []
    run: list[str] = []
    for piece in [*pieces, None]:
        if isinstance(piece, str):
            run.append(piece)
            continue
        text = "".join(run)
        if text not in memo:
            memo[text] = _encode_plain(tokenizer, text)
        ids += memo[text]
        run = []
        if piece is not None:
            ids.append(piece)
    return ids


def _control_pattern(tokenizer) -> re.Pattern | None:
    """A regex matching any spelling of the tokenizer's added and special
    tokens (longest first, so that no shorter one wins inside a longer);
    None when it has none that can be split."""
    if tokenizer not in _control_patterns:
        spellings = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
        spellings = sorted((s for s in spellings if len(s) > 1), key=len, reverse=True)
        _control_patterns[tokenizer] = re.compile("|".join(map(re.escape, spellings))) if spellings else None
    return _control_patterns[tokenizer]


def neutralise_control_tokens(messages: list[dict], tokenizer) -> list[dict]:
    """`messages` with every spelling of a control token in their content
    broken by a ZERO WIDTH SPACE after its first character ("<|im_end|>"
    becomes "<\u200b|im_end|>"), for an engine that applies the chat
    template itself. Returns new dicts; the stored messages are untouched.

    Why: a remote engine (vLLM, and the others that render the template with
    transformers) tokenizes the rendered prompt with its added tokens
    recognised, so a message holding "<|im_end|>\n<|im_start|>system\n..."
    would close its turn and open a system turn of the writer's own: the
    known injection of huggingface/transformers issue #29279. vLLM 0.32 has
    no request option to tokenize message content as text (the upstream pull
    requests, e.g. vllm-project/vllm#31735, were closed), so chatsite breaks
    the spellings before sending, in every role's content: what people and
    the model wrote reaches the engine as text, as `encode_conversation`
    guarantees for the local backend. Called before `build_prompt`, so that
    the count holds what is sent (each break costs a few tokens).

    Limits: only the control tokens of `tokenizer` (GENERATION_OPENAI_TOKENIZER)
    are known, so it must be the served model's tokenizer for this too; a
    one-character token cannot be broken and is left as it is.
    """
    pattern = _control_pattern(tokenizer)
    if pattern is None:
        return [dict(m) for m in messages]
    return [
        {**m, "content": pattern.sub(_break, m["content"])} if isinstance(m.get("content"), str) else dict(m)
        for m in messages
    ]


def _break(match: re.Match) -> str:
    token = match.group()
    return token[0] + ZERO_WIDTH_SPACE + token[1:]


def build_prompt(tokenizer, messages: list[dict], context_tokens: int, max_new_tokens: int) -> Prompt:
    """Fit `messages` and a reply of `max_new_tokens` into `context_tokens`.

    `messages` are {"role", "content"} dicts, oldest first, ending with the
    user's new message. Called off the event loop (the model thread, or a
    worker thread for the openai backend), since it tokenises.
    Raises PromptTooLong when the newest message alone leaves fewer than
    MIN_REPLY_TOKENS for the reply.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    ids: list[int] = []
    start = 0
    # Each attempt renders the template anew but tokenises only text that no
    # earlier attempt did: every turn's text is tokenised once per request.
    memo: dict = {}
    for start in range(len(turns)):
        # Start each kept history at a user turn so the model never sees an
        # assistant reply without its question.
        if start and turns[start]["role"] != "user":
            continue
        ids = _encode_conversation(tokenizer, system + turns[start:], memo)
        if len(ids) + max_new_tokens <= context_tokens:
            return Prompt(ids, start, max_new_tokens, budget_shrunk=False)
    room = context_tokens - len(ids)
    if room < MIN_REPLY_TOKENS:
        raise PromptTooLong(
            f"The message takes {len(ids)} of the {context_tokens} tokens the model can read, "
            f"leaving no room for a reply."
        )
    return Prompt(ids, start, room, budget_shrunk=True)


def kept_messages(messages: list[dict], prompt: Prompt) -> list[dict]:
    """The messages `prompt` holds, for an engine that applies the chat
    template itself: the system message (if any) and the turns after the
    `prompt.dropped_messages` oldest, as `build_prompt` kept them."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    return system + messages[len(system) + prompt.dropped_messages :]
