"""Chunked prefill on the tiny model: the same greedy text as a whole-prompt
prefill, alone and in a batch, and running replies keep going while a long
prompt is prefilled."""

import random

import pytest

from generation.runtime.engine import SamplingParams, make_engine
from generation.runtime.loading import shared_model
from generation.runtime.prompt import encode_conversation
from generation.runtime.worker import stop_token_ids

WORDS = ["tea", "dragon", "river", "東京", "🎉", "why", "the", "of", "42", "über", "\n", "code"]


@pytest.fixture
def loaded(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR)


def prompt_of(loaded, words: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    text = " ".join(rng.choices(WORDS, k=words))
    if words < 5:  # a bare handful of tokens, without the template's default system turn
        return loaded.tokenizer(text or "hi", add_special_tokens=False)["input_ids"]
    return encode_conversation(loaded.tokenizer, [{"role": "user", "content": text}])


def prefill(engine) -> list:
    """One loop's prefill work, as the model thread does it: up to one chunk's
    worth of prompt tokens, oldest waiting prompt first. (The ragged engine
    prefills within its step: nothing here.)"""
    outputs, budget = [], 0 if engine.prefill_in_step else engine.prefill_chunk_tokens
    while budget > 0 and (seq_id := engine.next_prefill()) is not None:
        size = min(budget, engine.prefill_left(seq_id))
        budget -= size
        outputs += [o for o in [engine.prefill_step(size)] if o]
    return outputs


def generate(loaded, prompt_list, *, chunk, join_every=1, strategy="batched", max_new_tokens=24, policy=None):
    """Drive an engine as the model thread does: admissions, one decode
    step, then one prefill chunk; a new prompt arrives every `join_every`
    loops. `policy`: the ragged engine's prefill policy (default: fixed
    chunks). Returns each prompt's tokens, and per loop which replies got a
    decode token while a prompt was still being prefilled."""
    engine = make_engine(strategy, loaded.model, stop_token_ids(loaded), prefill_chunk_tokens=chunk)
    if policy is not None:
        engine.prefill_policy = policy
    tokens = {str(i): [] for i in range(len(prompt_list))}
    pending = list(enumerate(prompt_list))
    during_prefill = []
    loop = 0
    while pending or len(engine):
        outputs = []
        if pending and loop % join_every == 0:
            index, prompt = pending.pop(0)
            outputs += [o for o in [engine.add(str(index), prompt, SamplingParams(max_new_tokens))] if o]
        prefilling = engine.next_prefill()
        decoded = engine.step()
        if prefilling is not None:
            during_prefill.append((prefilling, {o.seq_id for o in decoded}))
        outputs += decoded
        outputs += prefill(engine)
        for output in outputs:
            tokens[output.seq_id].append(output.token_id)
        loop += 1
    return tokens, during_prefill


@pytest.mark.parametrize("chunk", [3, 16, 64])
def test_chunked_prefill_gives_the_whole_prefills_greedy_text_alone(loaded, chunk):
    """Prompts of many lengths, shorter and longer than a chunk and on its
    boundaries, get exactly the tokens of a whole-prompt prefill."""
    prompt_list = [prompt_of(loaded, words, seed) for seed, words in enumerate([0, 1, 3, 5, 20, 41, 90, 150])]
    lengths = {len(p) for p in prompt_list}
    assert min(lengths) < 16 < max(lengths) and len(lengths) == len(prompt_list)
    for prompt in prompt_list:
        whole = generate(loaded, [prompt], chunk=0)[0]
        assert generate(loaded, [prompt], chunk=chunk)[0] == whole


@pytest.mark.parametrize(
    ("strategy", "chunk", "join_every"), [("batched", 8, 1), ("batched", 32, 3), ("interleave", 8, 2)]
)
def test_chunked_prefill_gives_the_same_text_in_a_batch(loaded, strategy, chunk, join_every):
    """Prompts arriving while others run and others wait for their prefill
    get the tokens they get alone with whole-prompt prefill."""
    prompt_list = [prompt_of(loaded, words, 100 + words) for words in (2, 60, 7, 120, 30, 1)]
    alone = {str(i): generate(loaded, [p], chunk=0)[0]["0"] for i, p in enumerate(prompt_list)}
    together, _ = generate(loaded, prompt_list, chunk=chunk, join_every=join_every, strategy=strategy)
    assert together == alone
    assert len({tuple(t) for t in alone.values()}) == len(prompt_list), "outputs should differ per prompt"


def test_a_long_prompt_does_not_stop_running_replies(loaded):
    """While a prompt of some 600 tokens is prefilled in chunks of 32, each of
    three running replies gets a token at every loop: none waits for more
    than one chunk. (The ragged engine's step that carries the last chunk
    also gives the long prompt its first token.)"""
    short = [prompt_of(loaded, 3, seed) for seed in range(3)]
    long_prompt = prompt_of(loaded, 400, 7)
    assert len(long_prompt) > 600
    engine_args = {"max_new_tokens": 200}
    _, during = generate(loaded, [*short, long_prompt], chunk=32, **engine_args)
    long_loops = [decoded for seq_id, decoded in during if seq_id == "3"]
    assert len(long_loops) == -(-len(long_prompt) // 32)  # one loop per chunk
    assert all(decoded - {"3"} == {"0", "1", "2"} for decoded in long_loops)


@pytest.mark.real_model
def test_the_bundled_model_writes_the_same_greedy_text_with_chunks(real_model):
    """On SmolLM2 itself, prompts of a few to some 400 tokens prefilled in
    chunks of 64, while the others run, get the whole-prefill greedy tokens."""
    prompt_list = [prompt_of(real_model, words, seed) for seed, words in enumerate([3, 40, 200])]
    alone = {
        str(i): generate(real_model, [p], chunk=0, max_new_tokens=16)[0]["0"]
        for i, p in enumerate(prompt_list)
    }
    assert generate(real_model, prompt_list, chunk=64, join_every=2, max_new_tokens=16)[0] == alone


def test_short_prompts_arriving_together_start_in_the_same_loop(loaded):
    """Four short prompts that fit one chunk together all get their first
    token from the first step; a long one arriving with them takes the rest
    of the chunk and finishes in later steps."""
    engine = make_engine("batched", loaded.model, stop_token_ids(loaded), prefill_chunk_tokens=64)
    short = [prompt_of(loaded, 3, seed) for seed in range(4)]
    long_prompt = prompt_of(loaded, 100, 9)
    for index, prompt in enumerate([*short, long_prompt]):
        assert engine.add(str(index), prompt, SamplingParams(8)) is None
    first_loop = {o.seq_id for o in engine.step()}
    assert first_loop == {"0", "1", "2", "3"}
    assert engine.next_prefill() == "4"
    assert engine.prefill_left("4") == len(long_prompt) - (64 - sum(len(p) for p in short))
