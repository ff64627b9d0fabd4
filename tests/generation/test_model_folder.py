"""The model folder chatsite writes reads as the original SmolLM2 under every
runtime: the pinned transformers, transformers 5 (vLLM's) and vLLM itself."""

import json
import os
import shutil
import subprocess

import pytest
from django.conf import settings
from django.core.management import call_command

from generation.runtime.modelfolder import (
    CACHE_COMPLETE_MARKER,
    MARKER_TEXT,
    file_sha256,
    make_faithful,
    model_folder,
)
from generation.runtime.source import bundled_gguf_path
from tests.vllm_server import vllm_python

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 2024-11-30, 3.14159!",
    "東京は日本の首都です。富士山はとても美しい山です。",
    "Emoji 🎉🚀👍🏽 and ümlauts",
    "  two leading spaces,\ttabs\n\nand blank lines  ",
]
CONVERSATION = [
    {"role": "user", "content": "Hello world"},
    {"role": "assistant", "content": "Hi! 🎉 How can I help?"},
    {"role": "user", "content": "東京について教えて"},
]

# Run by the vLLM venv's python: the same samples through transformers 5.
TRANSFORMERS_5 = """
import json, sys
import transformers
from transformers import AutoTokenizer
request = json.load(sys.stdin)
tokenizer = AutoTokenizer.from_pretrained(request["folder"], local_files_only=True)
rendered = tokenizer.apply_chat_template(request["conversation"], add_generation_prompt=True, tokenize=False)
rows = []
for text in request["texts"] + [rendered]:
    ids = tokenizer.encode(text)
    rows.append({"ids": ids, "text": tokenizer.decode(ids)})
print(json.dumps({"version": transformers.__version__, "rendered": rendered, "rows": rows,
                  "eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id}))
"""


@pytest.fixture(scope="module")
def folder():
    """The bundled SmolLM2's folder in the cache (written on first use)."""
    return model_folder("", settings.GENERATION_CACHE_DIR)


@pytest.fixture(scope="module")
def pinned(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def gguf_tokenizer():
    """The tokenizer transformers builds from the GGUF itself: what the app
    has always encoded with (about 10 s)."""
    from transformers import AutoTokenizer

    path = bundled_gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, legacy=True)


def test_folder_says_what_the_original_says(folder):
    """config.json names the architecture and the tokenizer is SmolLM2's GPT-2
    byte-level BPE, with <|im_end|> ending a turn and nothing prepended."""
    config = json.loads((folder / "config.json").read_text())
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    spec = json.loads((folder / "tokenizer.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert tokenizer_config["tokenizer_class"] == "GPT2Tokenizer"
    assert tokenizer_config["add_bos_token"] is False
    assert tokenizer_config["add_prefix_space"] is False
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert spec["decoder"]["type"] == "ByteLevel"
    assert spec["post_processor"]["type"] == "ByteLevel"
    assert (folder / CACHE_COMPLETE_MARKER).read_text() == MARKER_TEXT


def test_pinned_transformers_encodes_as_the_gguf_does(pinned, gguf_tokenizer):
    """The rewrite changes nothing for the app: every sample and the rendered
    chat get the ids the GGUF's own tokenizer gives, and decode back."""
    rendered = pinned.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert rendered == gguf_tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=False
    )
    for text in [*SAMPLES, rendered]:
        ids = pinned.encode(text)
        assert ids == gguf_tokenizer.encode(text, add_special_tokens=False), text
        assert pinned.decode(ids) == text


def test_transformers_5_reads_the_folder_as_the_pinned_one_does(folder, pinned):
    """vLLM's transformers 5 encodes every sample and the rendered chat to the
    pinned ids, decodes them to the same text, renders the same chat, and
    agrees on BOS and EOS."""
    request = {"folder": str(folder), "texts": SAMPLES, "conversation": CONVERSATION}
    result = subprocess.run(
        [str(vllm_python()), "-c", TRANSFORMERS_5],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    other = json.loads(result.stdout.strip().splitlines()[-1])
    assert other["version"].startswith("5.")
    rendered = pinned.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert other["rendered"] == rendered
    assert (other["bos"], other["eos"]) == (pinned.bos_token_id, pinned.eos_token_id)
    for text, row in zip([*SAMPLES, rendered], other["rows"], strict=True):
        assert row["ids"] == pinned.encode(text), text
        assert row["text"] == text


def test_old_cache_is_rewritten_in_place(tmp_path, folder, gguf_tokenizer):
    """A cache written before the rewrite (the GGUF loader's Llama tokenizer,
    no architectures, an "ok" marker) is made faithful on its next use,
    without dequantising again."""
    from transformers import AutoTokenizer

    old = tmp_path / file_sha256(bundled_gguf_path())[:32]
    old.mkdir()
    gguf_tokenizer.save_pretrained(old)
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (old / "config.json").write_text(json.dumps(config))
    (old / CACHE_COMPLETE_MARKER).write_text("ok\n")
    # Not yet the faithful folder: transformers 4.57 saves the GGUF's tokenizer
    # as a LlamaTokenizer, 5.x as a TokenizersBackend.
    assert json.loads((old / "tokenizer_config.json").read_text())["tokenizer_class"] != "GPT2Tokenizer"

    assert model_folder("", tmp_path) == old
    assert (old / CACHE_COMPLETE_MARKER).read_text() == MARKER_TEXT
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        assert comparable(old / name) == comparable(folder / name), name
    assert not (old / "model.safetensors").exists()
    assert AutoTokenizer.from_pretrained(old).encode("Hello world") == [19556, 905]


def comparable(path):
    """A folder file's JSON, less what transformers 4.57 and 5.x serialise
    differently for the same tokenizer (the shared cache may have been
    written by the other one): a BPE model's unused unknown token (every byte
    has a token) and its empty affixes, None under one and "" under the other,
    and tokenizer_config.json's copy of the added tokens, which 5.x leaves to
    tokenizer.json's (compared in full)."""
    data = json.loads(path.read_text())
    if path.name == "tokenizer_config.json":
        data.pop("added_tokens_decoder", None)
    if path.name == "tokenizer.json":
        model = {key: value for key, value in data["model"].items() if key != "unk_token"}
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            model[key] = model.get(key) or None
        data = {**data, "model": model}
    return data


def test_model_folder_command_prints_the_path(folder, capsys):
    """`manage.py model_folder` prints the folder alone on stdout, for
    `make vllm` and scripts."""
    call_command("model_folder")
    assert capsys.readouterr().out.strip() == str(folder)


def test_a_folder_source_is_served_as_it_is(tmp_path, folder):
    """GENERATION_MODEL naming a Hugging Face folder: that folder, untouched."""
    own = tmp_path / "own"
    shutil.copytree(folder, own, ignore=shutil.ignore_patterns("*.safetensors"))
    before = (own / "tokenizer_config.json").read_text()
    assert model_folder(str(own), tmp_path / "cache") == own
    assert (own / "tokenizer_config.json").read_text() == before


def test_a_cache_written_under_transformers_5_reads_alike_under_both(tmp_path, folder):
    """transformers 5 writes a GGUF model's config with the RoPE base only
    inside `rope_parameters` and a GGUF `quantization_config`; once made
    faithful, the installed transformers (4.57 or 5.x) reads SmolLM2's base
    100000, not the default 10000, and no quantisation."""
    from transformers import AutoConfig

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(folder / name, tmp_path / name)
    config = json.loads((folder / "config.json").read_text())
    for key in ("architectures", "rope_theta", "rope_scaling"):
        config.pop(key, None)
    config["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    config["quantization_config"] = {"quant_method": "gguf", "dequantize": False, "gguf_file": "x.gguf"}
    (tmp_path / "config.json").write_text(json.dumps(config))

    make_faithful(tmp_path)
    read = AutoConfig.from_pretrained(tmp_path, local_files_only=True)
    rope = getattr(read, "rope_parameters", None) or {"rope_theta": read.rope_theta}
    assert rope["rope_theta"] == 100000.0
    assert getattr(read, "quantization_config", None) is None
    assert read.architectures == ["LlamaForCausalLM"]
