"""What a model load writes to the server's log: steps and times, no noise.

A first load of a GGUF used to write a tqdm progress bar into the log (one
long line of carriage returns) and transformers' tokenizer "legacy
behaviour" warning. The load runs in a fresh process, as in the server,
on a tiny GGUF written here, so that it takes seconds.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter, TokenType

ROOT = Path(__file__).resolve().parents[2]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, as byte-level BPE vocabularies hold them."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]


def write_tiny_gguf(path: Path) -> Path:
    """A seeded two-layer Llama GGUF with a byte-level BPE tokenizer like SmolLM2's."""
    tokens = [*SPECIAL, *byte_level_alphabet(), "Ġt", "he"]
    hidden, ff, heads, kv_heads, layers = 16, 32, 2, 1, 2
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [TokenType.CONTROL] * len(SPECIAL) + [TokenType.NORMAL] * (len(tokens) - len(SPECIAL))
    )
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(1234)
    kv = hidden // heads * kv_heads

    def weight(*shape):
        return rng.normal(0, 0.3, shape).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for layer in range(layers):
        for name, shape in {
            "attn_norm": (hidden,),
            "ffn_norm": (hidden,),
            "attn_q": (hidden, hidden),
            "attn_k": (kv, hidden),
            "attn_v": (kv, hidden),
            "attn_output": (hidden, hidden),
            "ffn_gate": (ff, hidden),
            "ffn_up": (ff, hidden),
            "ffn_down": (hidden, ff),
        }.items():
            data = np.ones(shape, np.float32) if name.endswith("norm") else weight(*shape)
            writer.add_tensor(f"blk.{layer}.{name}.weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


LOAD = """
import os, sys
from pathlib import Path
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
import django
django.setup()
from generation.runtime.loading import load_model, resolve_device, resolve_source
loaded = load_model(resolve_source(sys.argv[1]), resolve_device("cpu"), Path(sys.argv[2]))
# return_dict=False: the ids alone, as 4.57 gives by default (5.x: a dict).
print(loaded.tokenizer.apply_chat_template(
    [{"role": "user", "content": "the"}], add_generation_prompt=True, return_dict=False
))
"""


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_first_gguf_load_logs_steps_and_time_without_progress_bar_or_warning(tiny_gguf, tmp_path):
    """The log of a first load (dequantising into the cache) has one line per
    step and the load time: no progress bar, no tokenizer warning."""
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(tiny_gguf), str(tmp_path / "cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "\r" not in log, "a progress bar was written to the log:\n" + log
    assert "legacy" not in log, log
    assert "Dequantised in" in log
    assert "Loaded model tiny.gguf on cpu in" in log
    assert [line for line in log.splitlines() if line.strip()] == [
        line for line in log.splitlines() if line.strip() and len(line) < 300
    ], log
    # The tokenizer is the GGUF's: the chat template and the special tokens work.
    assert result.stdout.strip().startswith("[1, ")
