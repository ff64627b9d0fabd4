"""Prefix reuse moves KV instead of copying it (the ragged engine, tiny
model): a conversation's keys and values are held once, by the prefix
cache between its turns and by its running sequence during a turn, never
by both; a prompt that shares only part of an entry copies that part and
leaves the entry to the others. (The greedy tokens of all this are checked
in test_prefix_reuse.py and test_ragged.py.)"""

import pytest

from generation.runtime.engine import SamplingParams
from generation.runtime.loading import shared_model
from tests.generation.test_prefix_reuse import drive, engine_of, first_turns, fresh, ids_of


@pytest.fixture
def loaded(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR)


def block_of(engine, seq_id: str) -> int:
    """Where a running sequence's KV block starts in memory."""
    return engine.sequences[seq_id].cache.block.data_ptr()


def entry_of(engine, prompt: list[int]) -> int:
    """Where the store's entry that `prompt` extends starts in memory."""
    return engine.prefix_cache.lookup(prompt).layers[0][0].data_ptr()


def test_a_leaving_reply_s_own_block_becomes_the_store_s_entry(loaded):
    """The store keeps the block the sequence wrote its KV in, counting all
    its bytes: no second copy of a conversation when its turn ends."""
    engine = engine_of(loaded)
    first = first_turns(loaded, 8)[5]
    assert engine.add("a", first, SamplingParams(12)) is not None
    blocks = []
    while len(engine):
        blocks.append((block_of(engine, "a"), engine.kv_bytes()["a"]))
        engine.step()
    pointer, nbytes = blocks[-1]
    assert entry_of(engine, [*first, 0]) == pointer
    assert engine.prefix_cache.nbytes == nbytes


@pytest.mark.parametrize("chunk", [0, 16])
def test_a_next_turn_takes_its_history_out_of_the_store(loaded, chunk):
    """While the next turns of four conversations run, the store holds
    nothing of them (each sequence took its entry's block over); when they
    end, the store holds each conversation once again, and the replies
    are the fresh greedy text."""
    engine = engine_of(loaded, chunk=chunk)
    firsts = {str(i): p for i, p in enumerate(first_turns(loaded, 8)[2:6])}
    replies, _ = drive(engine, firsts)
    assert len(engine.prefix_cache) == 4
    seconds = {i: firsts[i] + replies[i] + ids_of(loaded, 6, 40 + int(i)) for i in firsts}
    entries = {i: entry_of(engine, seconds[i]) for i in firsts}
    tokens = {i: [] for i in firsts}
    for seq_id, prompt in seconds.items():
        output = engine.add(seq_id, prompt, SamplingParams(16))
        assert engine.last_reused_tokens == len(firsts[seq_id]) + len(replies[seq_id]) - 1
        tokens[seq_id] += [output.token_id] if output else []
    assert len(engine.prefix_cache) == 0 and engine.prefix_cache.nbytes == 0
    while engine.next_prefill() is not None:
        for output in engine.step():
            tokens[output.seq_id].append(output.token_id)
    # Taken over, not copied: the blocks are the entries' (spare room enough for these prompts).
    assert {i: block_of(engine, i) for i in firsts} == entries
    while len(engine):
        for output in engine.step():
            tokens[output.seq_id].append(output.token_id)
    assert len(engine.prefix_cache) == 4
    assert tokens == {i: fresh(loaded, seconds[i]) for i in firsts}


def test_a_prompt_sharing_part_of_an_entry_copies_it_and_leaves_it(loaded):
    """A new conversation shares the template's system turn with a stored
    one: it copies those tokens, and the stored conversation's next turn
    still reuses all of its own history and writes the fresh text."""
    engine = engine_of(loaded)
    first = first_turns(loaded, 8)[4]
    reply = drive(engine, {"a": first})[0]["a"]
    other = first_turns(loaded, 8)[6]
    engine.add("other", other, SamplingParams(4))
    assert 0 < engine.last_reused_tokens < len(first)
    assert len(engine.prefix_cache) == 1
    assert block_of(engine, "other") != entry_of(engine, first + reply)
    engine.remove("other")
    second = first + reply + ids_of(loaded, 5, 3)
    tokens, reused = drive(engine, {"b": second})
    assert reused["b"] == len(first) + len(reply) - 1
    assert tokens["b"] == fresh(loaded, second)


def test_a_next_turn_cancelled_before_its_prefill_gives_its_history_back(loaded):
    """A chunked prompt that took its conversation's entry over and is
    cancelled while it waits puts the entry back: the next try reuses it."""
    engine = engine_of(loaded, chunk=16)
    first = first_turns(loaded, 8)[5]
    reply = drive(engine, {"a": first})[0]["a"]
    second = first + reply + ids_of(loaded, 5, 4)
    assert engine.add("b", second, SamplingParams(8)) is None
    assert len(engine.prefix_cache) == 0
    engine.remove("b")
    assert len(engine.prefix_cache) == 1
    tokens, reused = drive(engine, {"again": second})
    assert reused["again"] == len(first) + len(reply) - 1
    assert tokens["again"] == fresh(loaded, second)


def test_a_next_turn_whose_reply_re_tokenised_differently_still_takes_its_history(loaded):
    """The chat sends the reply back as text; its last ids may tokenise
    differently. A next turn sharing all of its history but the last few
    ids takes the entry over too (the store keeps no stale copy of the
    conversation) and writes the fresh greedy text."""
    engine = engine_of(loaded)
    first = first_turns(loaded, 8)[5]
    reply = drive(engine, {"a": first})[0]["a"]
    second = first + reply[:-3] + ids_of(loaded, 5, 11)
    read = first + reply[:-1]
    shared = next(n for n, (a, b) in enumerate(zip(read, second, strict=False)) if a != b)
    assert len(read) - 16 <= shared < len(read)
    tokens, reused = drive(engine, {"b": second})
    assert reused["b"] == shared
    assert tokens["b"] == fresh(loaded, second)
    assert len(engine.prefix_cache) == 1  # the new turn's entry alone, no stale copy of the first
