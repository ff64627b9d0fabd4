"""The ragged batch on the tiny model: each sequence holds only its own KV,
a prompt's chunks ride in the decode steps without stopping the replies
already running, an idle engine prefills a waiting prompt in one step, and
none of it changes a greedy reply: batched, chunked or reusing a prefix, each
writes what the interleave engine (one plain forward pass per sequence, the
transformers cache and masks) writes for it alone."""

import gc
import time

import pytest
import torch

from generation.runtime.engine import SamplingParams, make_engine
from generation.runtime.loading import shared_model
from generation.runtime.worker import stop_token_ids
from tests.generation.test_chunked_prefill import generate, prompt_of
from tests.generation.test_prefix_reuse import drive, engine_of, ids_of


@pytest.fixture
def loaded(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR)


LENGTHS = [0, 1, 2, 3, 4, 5, 8, 12, 22, 35, 57, 90, 140, 230]  # words: 1 to 467 tokens


def test_every_length_writes_the_interleave_engines_text_batched_and_chunked(loaded):
    """Prompts of 1 to some 470 tokens, arriving one per step while the
    others run, chunked at 7 and 64 tokens and whole, each get exactly the
    greedy tokens the interleave engine gives them alone."""
    prompt_list = [prompt_of(loaded, words, 300 + words) for words in LENGTHS]
    assert len({len(p) for p in prompt_list}) == len(prompt_list) and max(map(len, prompt_list)) > 400
    alone = {
        str(i): generate(loaded, [p], chunk=0, strategy="interleave", max_new_tokens=12)[0]["0"]
        for i, p in enumerate(prompt_list)
    }
    for chunk in (0, 7, 64):
        together, _ = generate(loaded, prompt_list, chunk=chunk, max_new_tokens=12)
        assert together == alone, f"chunk {chunk}"


def test_reused_prefixes_in_a_chunked_batch_write_the_interleave_engines_text(loaded):
    """Next turns of conversations of many lengths, prefilled in chunks of 16
    while the others run, reuse their first turn and write what the
    interleave engine writes for them alone, without reuse."""
    engine = engine_of(loaded, chunk=16)
    firsts = {str(i): prompt_of(loaded, words, 500 + words) for i, words in enumerate(LENGTHS[3::2])}
    replies, _ = drive(engine, firsts, join_every=2)
    seconds = {i: firsts[i] + replies[i] + ids_of(loaded, 4, 70 + int(i)) for i in firsts}
    tokens, reused = drive(engine, seconds, join_every=2)
    assert reused == {i: len(firsts[i]) + len(replies[i]) - 1 for i in firsts}
    baseline = engine_of(loaded, budget=0, strategy="interleave")
    assert tokens == {i: drive(baseline, {i: seconds[i]})[0][i] for i in firsts}


def test_a_long_prompt_does_not_grow_the_other_replies_kv(loaded):
    """Three short replies hold KV for their own few dozen tokens; a
    600-token prompt joining them leaves their bytes exactly as they were,
    and holds about its own length's worth (an eighth spare at most)."""
    engine = make_engine("batched", loaded.model, stop_token_ids(loaded), prefill_chunk_tokens=64)
    for index in range(3):
        engine.add(str(index), prompt_of(loaded, 3 + index, index), SamplingParams(100))
        engine.step()
    before = engine.kv_bytes()
    long_prompt = prompt_of(loaded, 400, 7)
    assert len(long_prompt) > 600
    engine.add("long", long_prompt, SamplingParams(100))
    while engine.next_prefill() is not None:
        engine.step()
    after = engine.kv_bytes()
    assert {seq_id: after[seq_id] for seq_id in before} == before
    per_token = after["long"] / engine.sequences["long"].cache.capacity
    assert max(before.values()) * 4 < after["long"]  # short rows: their own tokens and spare room only
    assert after["long"] <= per_token * (len(long_prompt) * 1.125 + 32)


def test_a_long_prompt_costs_running_replies_at_most_a_chunk(loaded):
    """While a 600-token prompt is prefilled in chunks of 32 (some 20
    steps), every step gives each of three running replies a token and none
    takes as long as prefilling that prompt whole (CPU time of the one
    torch thread: coarse, so that a busy machine does not fail it)."""
    # A full garbage collection in this big test process takes longer than
    # a chunk: keep it out of the timed steps.
    gc.collect()
    gc.disable()
    try:
        steps, whole_prefill, long_prompt = _chunk_steps_and_whole_prefill(loaded)
    finally:
        gc.enable()
    assert len(steps) == -(-len(long_prompt) // 32)
    assert max(steps) < whole_prefill, (max(steps), whole_prefill)


def _chunk_steps_and_whole_prefill(loaded):
    """CPU seconds of each step while a 600-token prompt is prefilled in
    chunks of 32 beside three replies; of its whole prefill alone."""
    long_prompt = prompt_of(loaded, 400, 7)
    whole = make_engine("batched", loaded.model, stop_token_ids(loaded))
    started = time.thread_time()
    whole.add("long", long_prompt, SamplingParams(1))
    whole_prefill = time.thread_time() - started
    engine = make_engine("batched", loaded.model, stop_token_ids(loaded), prefill_chunk_tokens=32)
    for index in range(3):
        engine.add(str(index), prompt_of(loaded, 3, index), SamplingParams(200))
        engine.step()
    engine.add("long", long_prompt, SamplingParams(200))
    steps = []
    while engine.next_prefill() is not None:
        started = time.thread_time()
        decoded = {output.seq_id for output in engine.step()}
        steps.append(time.thread_time() - started)
        assert {"0", "1", "2"} <= decoded
    return steps, whole_prefill, long_prompt


def test_an_idle_engine_prefills_a_waiting_prompt_in_one_step(loaded):
    """With nothing decoding, a long prompt waits for no chunks: the first
    step prefills it whole and gives its first token, the one a whole
    prefill gives."""
    long_prompt = prompt_of(loaded, 150, 3)
    assert len(long_prompt) > 4 * 32
    engine = make_engine("batched", loaded.model, stop_token_ids(loaded), prefill_chunk_tokens=32)
    assert engine.add("long", long_prompt, SamplingParams(5)) is None
    first = engine.step()
    assert [output.seq_id for output in first] == ["long"]
    alone = generate(loaded, [long_prompt], chunk=0, max_new_tokens=5)[0]["0"]
    assert first[0].token_id == alone[0]


def test_decode_attention_runs_on_one_thread_and_writes_the_same_text(loaded, monkeypatch):
    """With two torch threads, each decoding reply's attention (one query)
    runs on one thread, a prompt chunk's on both, the two come back after
    every layer, and the greedy replies are the interleave engine's: a
    one-query SDPA gives the same values on one thread as on two."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        calls.append((query.shape[2], torch.get_num_threads()))
        return sdpa(query, *args, **kwargs)

    prompt_list = [prompt_of(loaded, words, 900 + words) for words in (3, 12, 35, 90)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = {
            str(i): generate(loaded, [p], chunk=0, strategy="interleave", max_new_tokens=10)[0]["0"]
            for i, p in enumerate(prompt_list)
        }
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        together, _ = generate(loaded, prompt_list, chunk=16, max_new_tokens=10)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert together == alone
    assert after == 2
    assert {n for queries, n in calls if queries == 1} == {1}
    assert {n for queries, n in calls if queries > 1} == {2}
