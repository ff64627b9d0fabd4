"""Prompt building: the chat template, trimming old turns, refusing too long."""

import pytest

from generation.runtime.loading import shared_model
from generation.runtime.prompt import PromptTooLong, build_prompt


@pytest.fixture
def tokenizer(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR).tokenizer


def conversation(turns):
    messages = []
    for index in range(turns):
        messages.append({"role": "user", "content": f"Question number {index} " + "word " * 20})
        messages.append({"role": "assistant", "content": f"Answer number {index} " + "word " * 20})
    messages.append({"role": "user", "content": "The newest question"})
    return messages


def test_whole_history_used_when_it_fits(tokenizer):
    ids, dropped = build_prompt(tokenizer, conversation(3), 4000)
    text = tokenizer.decode(ids)
    assert dropped == 0
    assert "Question number 0" in text and "The newest question" in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_oldest_turns_dropped_to_fit(tokenizer):
    full, _ = build_prompt(tokenizer, conversation(6), 4000)
    ids, dropped = build_prompt(tokenizer, conversation(6), len(full) - 10)
    text = tokenizer.decode(ids)
    assert len(ids) <= len(full) - 10
    assert dropped == 2  # one question and its answer
    assert "Question number 0" not in text
    assert "Question number 1" in text and "The newest question" in text


def test_system_message_is_kept(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *conversation(6)]
    full, _ = build_prompt(tokenizer, messages, 4000)
    ids, _ = build_prompt(tokenizer, messages, len(full) - 10)
    assert "Be brief." in tokenizer.decode(ids)


def test_newest_message_alone_too_long(tokenizer):
    messages = [{"role": "user", "content": "word " * 500}]
    with pytest.raises(PromptTooLong):
        build_prompt(tokenizer, messages, 100)
