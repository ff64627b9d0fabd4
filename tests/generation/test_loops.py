"""The loop stop: a reply that writes the same span over and over ends with
finish reason "repetition"; repetitive but legitimate answers do not."""

import dataclasses

import pytest
import torch

from generation.runtime.engine import SamplingParams, make_engine
from generation.runtime.loading import shared_model
from generation.runtime.loops import MIN_LOOP_TOKENS, would_cut
from generation.runtime.prompt import encode_conversation
from generation.runtime.types import Done, FinishReason
from generation.runtime.worker import stop_token_ids


@pytest.fixture
def loaded(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR)


def ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer.encode(text, add_special_tokens=False)


def test_a_japanese_sentence_written_again_and_again_is_cut(loaded):
    """What SmolLM2 does with a Japanese question: one sentence, over and over."""
    sentence = "私は日本の文化について学ぶことが大好きです。"
    assert not would_cut(ids(loaded, sentence * 2))
    assert would_cut(ids(loaded, "こんにちは。" + sentence * 6))


def test_an_english_paragraph_loop_and_one_word_said_over_and_over_are_cut(loaded):
    step = "Add the flour and stir until smooth. Then let it rest for ten minutes. "
    assert would_cut(ids(loaded, "To make bread: " + step * 5))
    assert would_cut(ids(loaded, "blue " * 80))


def test_a_phrase_said_two_or_three_times_is_not_cut(loaded):
    chorus = "Row, row, row your boat, gently down the stream. "
    assert not would_cut(ids(loaded, chorus * 3))


def test_a_list_and_a_table_whose_rows_differ_are_not_cut(loaded):
    """Legitimately repetitive answers: every row has the same shape, but
    they differ in a number or a name, so no span repeats whole."""
    table = "| n | n squared |\n|---|---|\n" + "".join(f"| {n} | {n * n} |\n" for n in range(1, 41))
    listing = "".join(f"{n}. Step {n}: check item number {n} on the list.\n" for n in range(1, 31))
    japanese = "".join(f"{n}月: 毎月の予定を確認します。\n" for n in range(1, 13))
    for text in (table, listing, japanese):
        assert len(ids(loaded, text)) > 2 * MIN_LOOP_TOKENS
        assert not would_cut(ids(loaded, text)), text[:40]


def test_a_short_markdown_separator_row_is_not_cut(loaded):
    assert not would_cut(ids(loaded, "| a | b | c | d | e | f |\n|---|---|---|---|---|---|\n"))


class Looping(torch.nn.Module):
    """The tiny model, steered to write the tokens of `cycle` round and round
    (greedy follows the +1000 bias). It runs the real model, so the engine's
    caches and batching are exercised as usual."""

    def __init__(self, inner, cycle: list[int]):
        super().__init__()
        self.inner = inner
        self.following = {a: b for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)}
        self.start = cycle[0]

    @property
    def config(self):
        return self.inner.config

    @property
    def generation_config(self):
        return self.inner.generation_config

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        output = self.inner(input_ids=input_ids, logits_to_keep=logits_to_keep, **kwargs)
        if isinstance(logits_to_keep, torch.Tensor):  # the ragged batch: one row, logits of these tokens
            for index, token in enumerate(input_ids[0, logits_to_keep].tolist()):
                output.logits[0, index, self.following.get(token, self.start)] += 1000
            return output
        for row, token in enumerate(input_ids[:, -1].tolist()):
            output.logits[row, -1, self.following.get(token, self.start)] += 1000
        return output


def test_the_engine_cuts_a_looping_reply_and_leaves_the_others_running(loaded):
    """A reply looping on a 10-token span ends with "repetition" once the
    span has been written seven times (64 tokens of loop at least); a
    benchmark request (ignore_eos) loops on to its length."""
    cycle = ids(loaded, " Short blue light scatters more in the air above us.")[:10]
    assert len(set(cycle)) == len(cycle) == 10
    engine = make_engine("batched", Looping(loaded.model, cycle), stop_token_ids(loaded))
    prompt = encode_conversation(loaded.tokenizer, [{"role": "user", "content": "Why is the sky blue?"}])
    outputs = [engine.add("loop", prompt, SamplingParams(200))]
    outputs += [engine.add("bench", prompt, SamplingParams(100, ignore_eos=True))]
    while len(engine):
        outputs += engine.step()
    ends = {o.seq_id: (o.finish_reason, n) for n, o in enumerate(outputs) if o.finish_reason}
    tokens = {seq: [o.token_id for o in outputs if o.seq_id == seq] for seq in ("loop", "bench")}
    assert ends["loop"][0] == FinishReason.REPETITION
    assert tokens["loop"] == cycle * 7
    assert ends["bench"][0] == FinishReason.LENGTH
    assert len(tokens["bench"]) == 100


def test_repetition_is_length_to_openai_clients():
    """The API sends only OpenAI's reasons: a cut loop is an answer cut short."""
    assert FinishReason.REPETITION.openai_name == "length"
    assert [reason.openai_name for reason in (FinishReason.STOP, FinishReason.LENGTH)] == ["stop", "length"]


async def test_the_service_ends_a_looping_reply_with_repetition(loaded, make_service):
    """Through the model thread: the reply ends early with finish reason
    "repetition", keeps the text it wrote, and frees its slot."""
    cycle = ids(loaded, " Short blue light scatters more in the air above us.")[:10]
    looping = dataclasses.replace(loaded, model=Looping(loaded.model, cycle))
    service = await make_service(load=lambda: looping, max_new_tokens=400)
    handle = service.submit(user_id=1, messages=[{"role": "user", "content": "Why is the sky blue?"}])
    events = [event async for event in handle]
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason is FinishReason.REPETITION
    assert done.usage.completion_tokens == 70
    assert done.text == loaded.tokenizer.decode(cycle * 7)
    assert not service.running
