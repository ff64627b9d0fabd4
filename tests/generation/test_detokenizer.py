"""The detokenizer sends exact text and never half a character."""

import pytest

from generation.runtime.detokenizer import REPLACEMENT, IncrementalDetokenizer
from generation.runtime.loading import shared_model


@pytest.fixture
def tokenizer(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR).tokenizer


@pytest.mark.parametrize(
    "text",
    [
        "東京は日本の首都です。富士山はとても美しい山です。",
        "Emoji 🎉🚀 and ümlauts, then かな and 漢字 mixed.",
        "plain ASCII only",
    ],
)
def test_deltas_are_exact_and_never_split_characters(tokenizer, text):
    """Pushing the ids one by one yields deltas without U+FFFD whose
    concatenation is the decoded text."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(token_id) for token_id in ids]
    deltas.append(detokenizer.flush())
    assert all(REPLACEMENT not in delta for delta in deltas)
    assert "".join(deltas) == text
    # The byte-level tokenizer does split these characters, so holding back mattered.
    if not text.isascii():
        assert "" in deltas[:-1]


def test_special_tokens_are_not_text(tokenizer):
    """The end-of-turn token ends the reply without showing up in it."""
    ids = [
        *tokenizer.encode("Done.", add_special_tokens=False),
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert "".join(detokenizer.push(i) for i in ids) + detokenizer.flush() == "Done."
