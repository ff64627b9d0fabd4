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


def byte_token_ids(tokenizer, data: bytes) -> list[int]:
    """One token per byte, through the tokenizer's byte vocabulary (the 256
    single-byte tokens a byte-level BPE can always fall back to)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    ids = tokenizer.convert_tokens_to_ids([alphabet[byte] for byte in data])
    assert tokenizer.unk_token_id not in ids
    return ids


@pytest.mark.parametrize("text", ["東京は日本の首都です。", "Emoji 🎉🚀 and 👩‍💻!", "ümlaut é"])
def test_reply_cut_at_any_byte_drops_the_unfinished_character(tokenizer, text):
    """A reply that ends after any byte (cancel, length, error) streams and
    flushes only whole characters: never U+FFFD, always the longest complete
    prefix, and the flushed rest adds nothing the stream would not have shown."""
    data = text.encode()
    ids = byte_token_ids(tokenizer, data)
    for cut in range(len(data) + 1):
        detokenizer = IncrementalDetokenizer(tokenizer)
        streamed = "".join(detokenizer.push(token_id) for token_id in ids[:cut])
        rest = detokenizer.flush()
        assert REPLACEMENT not in streamed + rest, (cut, streamed + rest)
        assert streamed + rest == data[:cut].decode("utf-8", errors="ignore"), cut


def test_complete_text_before_an_unfinished_character_is_not_held(tokenizer):
    """Text in the same token as the first byte of a character streams at once:
    a cut right after it keeps it, so an error or interruption loses nothing
    that was certain."""
    space_and_lead_byte = tokenizer.convert_tokens_to_ids("Ġæ")  # " " + first byte of 東
    assert space_and_lead_byte != tokenizer.unk_token_id
    detokenizer = IncrementalDetokenizer(tokenizer)
    ids = tokenizer.encode("Tokyo", add_special_tokens=False)
    streamed = "".join(detokenizer.push(i) for i in [*ids, space_and_lead_byte])
    assert streamed == "Tokyo "
    assert detokenizer.flush() == ""


def test_a_stop_string_split_into_bytes_never_shows(tokenizer):
    """A stop string of multi-byte characters, written one byte per token,
    ends the text before it: no delta holds any of its characters, not even
    the first one while the rest could still follow, and nothing after it
    comes out."""
    ids = byte_token_ids(tokenizer, "今日は東京へ、東京から。".encode())
    detokenizer = IncrementalDetokenizer(tokenizer, stop=("東京か", "東京へ"))
    deltas = [detokenizer.push(token_id) for token_id in ids]
    assert detokenizer.stopped
    assert "".join(deltas) + detokenizer.flush() == "今日は"
    assert detokenizer.text == "今日は"
