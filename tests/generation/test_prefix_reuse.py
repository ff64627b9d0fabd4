"""Prefix reuse on the tiny model: a prompt that starts with what the engine
already read (an earlier prompt and its reply) prefills only the rest, and
gets exactly the greedy tokens of a fresh prefill, alone and in a batch,
with chunked prefill on and off; a changed conversation never gets a wrong
prefix; the store stays within its budget."""

import random

import pytest

from generation.runtime.engine import SamplingParams, make_engine
from generation.runtime.loading import shared_model
from generation.runtime.prompt import encode_conversation
from generation.runtime.seqkv import SequenceKV
from generation.runtime.worker import stop_token_ids
from tests.generation.test_chunked_prefill import prefill

WORDS = ["tea", "dragon", "river", "東京", "🎉", "why", "the", "of", "42", "über", "\n", "code"]
BUDGET = 64 * 2**20  # far more than these tests store


@pytest.fixture
def loaded(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR)


def text_of(words: int, seed: int) -> str:
    return " ".join(random.Random(seed).choices(WORDS, k=words))


def ids_of(loaded, words: int, seed: int) -> list[int]:
    """Plain text ids: a next turn's new tokens."""
    return loaded.tokenizer(text_of(words, seed) or "hi", add_special_tokens=False)["input_ids"]


def engine_of(loaded, *, chunk=0, budget=BUDGET, strategy="batched"):
    return make_engine(
        strategy, loaded.model, stop_token_ids(loaded), prefill_chunk_tokens=chunk, prefix_cache_bytes=budget
    )


def drive(engine, prompts: dict[str, list[int]], *, join_every=1, max_new_tokens=16):
    """Run prompts to their end as the model thread does (admission, decode
    step, prefill chunk; one arrival every `join_every` loops). Returns each
    prompt's tokens and how many of its prompt tokens were reused."""
    tokens = {seq_id: [] for seq_id in prompts}
    reused = {}
    pending = list(prompts.items())
    loop = 0
    while pending or len(engine):
        outputs = []
        if pending and loop % join_every == 0:
            seq_id, prompt = pending.pop(0)
            outputs += [o for o in [engine.add(seq_id, prompt, SamplingParams(max_new_tokens))] if o]
            reused[seq_id] = engine.last_reused_tokens
        outputs += engine.step()
        outputs += prefill(engine)
        for output in outputs:
            tokens[output.seq_id].append(output.token_id)
        loop += 1
    return tokens, reused


def fresh(loaded, prompt: list[int], max_new_tokens=16) -> list[int]:
    """The greedy tokens of a whole-prompt prefill, no reuse."""
    return drive(engine_of(loaded, budget=0), {"x": prompt}, max_new_tokens=max_new_tokens)[0]["x"]


def first_turns(loaded, count: int) -> list[list[int]]:
    """Chat prompts of many lengths (a few to some 300 tokens)."""
    return [
        encode_conversation(loaded.tokenizer, [{"role": "user", "content": text_of(words, seed)}])
        for seed, words in enumerate([1, 4, 9, 20, 45, 80, 150, 200][:count])
    ]


@pytest.mark.parametrize(
    ("strategy", "chunk"), [("batched", 0), ("batched", 5), ("batched", 32), ("interleave", 7)]
)
def test_a_next_turn_reuses_the_last_one_and_writes_the_fresh_greedy_text(loaded, strategy, chunk):
    """Turn 2 of conversations of many lengths, each run alone: its prompt
    starts with turn 1's prompt and reply, all of which the model read is
    reused, and its tokens equal a fresh prefill's."""
    for index, first in enumerate(first_turns(loaded, 8)):
        engine = engine_of(loaded, chunk=chunk, strategy=strategy)
        reply = drive(engine, {"t1": first})[0]["t1"]
        second = first + reply + ids_of(loaded, 3 + index, 50 + index)
        tokens, reused = drive(engine, {"t2": second})
        assert reused["t2"] == len(first) + len(reply) - 1  # the reply's last token was never fed
        assert tokens["t2"] == fresh(loaded, second)


@pytest.mark.parametrize(("chunk", "join_every"), [(0, 1), (0, 3), (8, 1), (32, 2)])
def test_reused_prompts_in_a_batch_write_what_they_write_alone(loaded, chunk, join_every):
    """Next turns of six conversations arriving while the others run (and,
    chunked, while others wait for their prefill) reuse their own history
    and get the tokens a fresh prefill gets alone."""
    engine = engine_of(loaded, chunk=chunk)
    firsts = {str(i): p for i, p in enumerate(first_turns(loaded, 6))}
    replies, _ = drive(engine, firsts, join_every=join_every)
    seconds = {i: firsts[i] + replies[i] + ids_of(loaded, 5, 90 + int(i)) for i in firsts}
    tokens, reused = drive(engine, seconds, join_every=join_every)
    assert reused == {i: len(firsts[i]) + len(replies[i]) - 1 for i in firsts}
    assert tokens == {i: fresh(loaded, seconds[i]) for i in firsts}
    assert len({tuple(t) for t in tokens.values()}) == len(tokens), "outputs should differ per prompt"


@pytest.mark.parametrize("chunk", [0, 16])
def test_a_changed_conversation_gets_only_what_it_shares(loaded, chunk):
    """Regenerated (the same prompt again), edited (a word changed in the
    middle), trimmed (the oldest turn gone) or brand new: each reuses at
    most the ids it shares with what the engine read before, and writes the
    fresh prefill's tokens."""
    engine = engine_of(loaded, chunk=chunk)
    messages = [
        {"role": "user", "content": text_of(40, 1)},
        {"role": "assistant", "content": text_of(30, 2)},
        {"role": "user", "content": text_of(25, 3)},
    ]
    original = encode_conversation(loaded.tokenizer, messages)
    reply = drive(engine, {"orig": original})[0]["orig"]
    read = original + reply[:-1]
    edited_text = text_of(25, 3).replace(" ", " dragon ", 1)
    cases = {
        "regenerated": original,
        "edited": encode_conversation(
            loaded.tokenizer, [*messages[:2], {"role": "user", "content": edited_text}]
        ),
        "trimmed": encode_conversation(loaded.tokenizer, messages[2:]),
        "new": encode_conversation(loaded.tokenizer, [{"role": "user", "content": text_of(12, 9)}]),
    }
    for name, prompt in cases.items():
        shared = next((n for n, (a, b) in enumerate(zip(read, prompt, strict=False)) if a != b), None)
        shared = min(len(read), len(prompt)) if shared is None else shared
        tokens, reused = drive(engine, {name: prompt})
        assert reused[name] <= min(shared, len(prompt) - 1), name
        assert tokens[name] == fresh(loaded, prompt), name
    assert engine.last_reused_tokens > 0  # "new" still shares the template's system turn
    assert drive(engine, {"again": original})[1]["again"] == len(original) - 1


@pytest.mark.real_model
def test_the_bundled_model_writes_the_same_greedy_text_with_reuse(real_model):
    """On SmolLM2 itself, the second turns of three conversations, batched
    and chunked, reuse their first turns and write the fresh greedy text."""
    engine = engine_of(real_model, chunk=64)
    firsts = {str(i): p for i, p in enumerate(first_turns(real_model, 8)[2::3])}
    replies, _ = drive(engine, firsts, join_every=2)
    seconds = {i: firsts[i] + replies[i] + ids_of(real_model, 30, int(i)) for i in firsts}
    tokens, reused = drive(engine, seconds, join_every=2)
    assert reused == {i: len(firsts[i]) + len(replies[i]) - 1 for i in firsts}
    assert tokens == {i: fresh(real_model, seconds[i]) for i in firsts}


def test_the_store_stays_in_its_budget_and_evicts_the_oldest(loaded):
    """With room for about two conversations, a third evicts the least
    recently used one, the store never holds more than its budget, and the
    evicted conversation's next turn is prefilled afresh, correctly."""
    probe = engine_of(loaded)
    firsts = first_turns(loaded, 8)[5:8]  # 80-200 words
    drive(probe, {"p": firsts[0]})
    per_token = probe.prefix_cache.nbytes / (len(firsts[0]) + 15)
    budget = int(per_token * 2.2 * max(len(p) + 16 for p in firsts))
    engine = engine_of(loaded, budget=budget)
    replies = {}
    for index, first in enumerate(firsts):
        replies[index] = drive(engine, {str(index): first})[0][str(index)]
        assert engine.prefix_cache.nbytes <= budget
    assert engine.prefix_cache.evictions >= 1
    assert len(engine.prefix_cache) == 2
    evicted = firsts[0] + replies[0] + ids_of(loaded, 4, 7)
    tokens, reused = drive(engine, {"back": evicted})
    assert reused["back"] < len(firsts[0])  # at most the shared system turn
    assert tokens["back"] == fresh(loaded, evicted)
    recent = firsts[2] + replies[2] + ids_of(loaded, 4, 8)
    assert drive(engine, {"recent": recent})[1]["recent"] == len(firsts[2]) + len(replies[2]) - 1
    assert engine.prefix_cache.nbytes <= budget


def test_a_sequence_larger_than_the_budget_keeps_its_start_only(loaded):
    """A budget smaller than one conversation keeps the leading tokens that
    fit, and a next turn reuses just those."""
    first = first_turns(loaded, 8)[7]
    per_token = SequenceKV.for_model(loaded.model).bytes_per_token
    engine = engine_of(loaded, budget=per_token * 100)
    reply = drive(engine, {"p": first})[0]["p"]
    assert engine.prefix_cache.nbytes == per_token * 100
    second = first + reply + ids_of(loaded, 4, 3)
    tokens, reused = drive(engine, {"next": second})
    assert reused["next"] == 100
    assert tokens["next"] == fresh(loaded, second)


def test_no_budget_no_reuse(loaded):
    """GENERATION_PREFIX_CACHE_MB=0: nothing is kept, every prompt is
    prefilled whole."""
    engine = engine_of(loaded, budget=0)
    first = first_turns(loaded, 3)[2]
    reply = drive(engine, {"a": first})[0]["a"]
    assert drive(engine, {"b": first + reply})[1]["b"] == 0
    assert engine.prefix_cache.nbytes == 0


async def test_the_next_turn_through_the_service_reuses_the_first(make_service):
    """A conversation's second turn, sent through the generation service as
    the chat sends it (history as text), reuses at least the first turn's
    prompt, and its record says how many tokens; a conversation that starts
    over from another question does not."""
    service = await make_service(max_new_tokens=12)
    records = {}
    service.record_listeners.append(lambda record: records.__setitem__(record.request_id, record))
    first = [{"role": "user", "content": text_of(60, 4)}]

    async def turn(messages):
        events = [event.as_dict() async for event in service.submit(user_id=1, messages=messages)]
        assert events[-1]["type"] == "done"
        return events[-1]

    done = await turn(first)
    second = await turn([*first, {"role": "assistant", "content": done["text"]}, *ask_again()])
    other = await turn([{"role": "user", "content": text_of(60, 5)}])
    ids = list(records)
    prompt_tokens = records[ids[0]].prompt_tokens
    assert records[ids[0]].cached_tokens == 0
    assert prompt_tokens - 1 <= records[ids[1]].cached_tokens < second["usage"]["prompt_tokens"]
    assert 0 < records[ids[2]].cached_tokens < 40  # the template's system turn alone
    assert other["usage"]["prompt_tokens"] > 40


def ask_again():
    return [{"role": "user", "content": "And then?"}]
