"""The reply's token budget against the model's context, and replies that end
in the middle of a character, through the generation service."""

import asyncio
import functools
import threading

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from generation.runtime.detokenizer import REPLACEMENT
from generation.runtime.loading import LoadedModel
from tests.generation.test_service import LONG, collect, ready

CONTEXT = 8192  # the tiny model's, like the bundled SmolLM2's


async def started_then_cancel(handle, tokens=3):
    """Events of a reply cancelled once it has streamed `tokens` tokens."""
    events = []
    async with asyncio.timeout(60):
        async for event in handle:
            events.append(event.as_dict())
            if sum(e["type"] == "token" for e in events) == tokens:
                handle.cancel()
    return events


@pytest.mark.parametrize(
    ("text", "max_new_tokens"),
    [("Hi", 8162), ("Hi", CONTEXT), (("Tell me about Tokyo. " * 96)[:2000], 7800)],
    ids=["hi-8162", "hi-8192", "2000-characters-7800"],
)
async def test_a_budget_near_the_context_still_gets_a_reply(make_service, text, max_new_tokens):
    """max_new_tokens near the context, or a 2,000-character message with 7800,
    gets a reply with the budget shrunk to what fits, said in the started
    event and the record."""
    service = await ready(await make_service(max_new_tokens=max_new_tokens))
    records = []
    service.record_listeners.append(records.append)
    events = await started_then_cancel(
        service.submit(user_id=1, messages=[{"role": "user", "content": text}])
    )
    started, done = events[0], events[-1]
    assert started["type"] == "started" and started["budget_shrunk"] is True
    assert started["max_new_tokens"] == CONTEXT - started["prompt_tokens"] < max_new_tokens
    assert done["type"] == "done" and done["text"]
    assert records[0].max_new_tokens == started["max_new_tokens"] and records[0].budget_shrunk is True


async def test_a_shrunk_budget_ends_with_an_honest_length(make_service, tiny_model_dir):
    """With a small context, the reply stops at length exactly where the
    context is full, and says so."""
    loaded = with_context(tiny_model_dir, 64)
    service = await ready(await make_service(max_new_tokens=512, load=lambda: loaded))
    events = await collect(service.submit(user_id=1, messages=LONG))
    started, done = events[0], events[-1]
    assert started["budget_shrunk"] and started["prompt_tokens"] + started["max_new_tokens"] == 64
    assert done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == started["max_new_tokens"]


async def test_too_long_only_when_no_short_reply_fits(make_service, tiny_model_dir):
    loaded = with_context(tiny_model_dir, 64)
    service = await ready(await make_service(max_new_tokens=512, load=lambda: loaded))
    events = await collect(service.submit(user_id=1, messages=[{"role": "user", "content": "word " * 30}]))
    assert events[-1]["type"] == "error" and events[-1]["code"] == "too_long"
    assert "leaving no room for a reply" in events[-1]["message"]
    assert service.running == {}


def with_context(folder, context_tokens: int) -> LoadedModel:
    """The tiny model, reading only `context_tokens` tokens."""
    model = LlamaForCausalLM.from_pretrained(folder, max_position_embeddings=context_tokens).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model, tokenizer, "tiny-short", torch.device("cpu"), 0.0, False)


# A reply that writes 東京 byte by byte, for ever, whatever came before.
TOKYO = "東京".encode()


@functools.cache
def tokyo_model(folder) -> LoadedModel:
    """A one-layer Llama whose greedy reply after the prompt's last newline is
    the bytes of 東京, one byte token each, round and round.

    Each chain token's embedding is its own axis; the layer adds nothing (zero
    output projections), so the last hidden state names the last token and
    lm_head maps it to the next byte of the chain.
    """
    tokenizer = AutoTokenizer.from_pretrained(folder)
    alphabet = bytes_to_unicode()
    chain = [tokenizer.convert_tokens_to_ids("Ċ")]  # "\n", which ends the generation prompt
    chain += tokenizer.convert_tokens_to_ids([alphabet[byte] for byte in TOKYO])
    successor = dict(zip(chain, [*chain[1:], chain[1]], strict=True))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        for axis, token in enumerate(chain):
            model.model.embed_tokens.weight[token, axis] = 1.0
            model.lm_head.weight[successor[token], axis] = 1.0
    return LoadedModel(model, tokenizer, "tokyo", torch.device("cpu"), 0.0, False)


async def test_a_reply_cut_at_length_mid_character_has_no_replacement_character(make_service, tiny_model_dir):
    """Cut after any byte of 東京, the reply is the whole characters it holds."""
    loaded = tokyo_model(tiny_model_dir)
    service = await ready(await make_service(max_new_tokens=1, load=lambda: loaded))
    for max_new_tokens in range(1, len(TOKYO) + 1):
        service.update_limits(service.limits.replace(max_new_tokens=max_new_tokens))
        events = await collect(service.submit(user_id=1, messages=[{"role": "user", "content": "Tokyo?"}]))
        done = events[-1]
        assert done["finish_reason"] == "length"
        assert done["text"] == TOKYO[:max_new_tokens].decode(errors="ignore"), max_new_tokens
        assert done["text"] == "".join(e["text"] for e in events if e["type"] == "token")


class ForwardGate:
    """A forward pre-hook that holds the model thread at the start of one
    chosen forward pass until released, so that a cancel lands while that
    pass runs, as a user's cancel does, at a known token.

    Without it, where a cancel lands is a race between the loop and the model
    thread; on a busy machine it lands nearly always right after the step
    that completed a character, and a test that waits for cuts inside one
    fails now and then.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._passes = 0
        self._hold_at: int | None = None
        self.holding = threading.Event()

    def hold_at(self, forward_pass: int) -> None:
        """Hold the `forward_pass`-th pass from now on (1: the next one)."""
        with self._condition:
            self._passes, self._hold_at = 0, forward_pass
            self.holding.clear()

    def release(self) -> None:
        """Let the held pass, and every later one, run."""
        with self._condition:
            self._hold_at = None
            self._condition.notify_all()

    def __call__(self, module, args) -> None:
        with self._condition:
            self._passes += 1
            if self._passes == self._hold_at:
                self.holding.set()
                self._condition.wait_for(lambda: self._hold_at is None, timeout=60)


async def test_a_reply_cancelled_mid_character_has_no_replacement_character(make_service, tiny_model_dir):
    """Cancelled while the model computes any byte of 東京 (or of the next
    東), the reply ends on a whole character, without U+FFFD, and its text is
    what streamed; the cuts include 1 and 2 bytes into a character."""
    loaded = tokyo_model(tiny_model_dir)
    gate = ForwardGate()
    hook = loaded.model.register_forward_pre_hook(gate)
    try:
        service = await ready(await make_service(max_new_tokens=3000, load=lambda: loaded))
        # One forward pass per token (the prefill gives the first). The model
        # thread looks for cancellations before each step, and runs the first
        # step right after the prefill, so the earliest cut is at 2 tokens.
        for generated in range(2, len(TOKYO) + 3):
            gate.hold_at(generated)
            handle = service.submit(user_id=generated, messages=[{"role": "user", "content": "Tokyo?"}])
            assert await asyncio.to_thread(gate.holding.wait, 30), generated
            handle.cancel()
            gate.release()
            events = await collect(handle)
            done = events[-1]
            assert done["finish_reason"] == "cancelled"
            assert done["usage"]["completion_tokens"] == generated
            assert REPLACEMENT not in done["text"]
            assert done["text"] == (TOKYO * 2)[:generated].decode(errors="ignore"), generated
            assert done["text"] == "".join(e["text"] for e in events if e["type"] == "token")
    finally:
        gate.release()
        hook.remove()
