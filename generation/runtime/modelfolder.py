"""Make the dequantised GGUF folder read as the original SmolLM2 everywhere.

transformers' GGUF loader builds SmolLM2's tokenizer as a *Llama* tokenizer:
`tokenizer_config.json` says `LlamaTokenizer` with `add_bos_token: true` and
`<|im_start|>` as both BOS and EOS, `tokenizer.json` has a post-processor that
prepends `<|im_start|>` and a SentencePiece-style decoder (ByteFallback, Fuse,
Replace "▁") in front of ByteLevel, and `config.json` names no architecture.
transformers 4.57 happens to read that back right. transformers 5 rebuilds a
LlamaTokenizer's pipeline from its class (Metaspace), so "Hello world" gets
other ids and decodes as "Helloworld", and vLLM, which reads it the same way,
answers in byte-level mojibake ("ĊĊTheĠanswerĠis:"). (transformers 5.25's own
GGUF loader builds a byte-level tokenizer, saved as `TokenizersBackend`, but
writes a config that 4.57 misreads: see `faithful_config`.)

This module rewrites those files as HuggingFaceTB/SmolLM2-135M-Instruct
publishes them: a GPT-2 byte-level BPE tokenizer (`GPT2Tokenizer`, no BOS
added, no prefix space, ByteLevel pre-tokenizer, post-processor and decoder),
BOS `<|im_start|>`, EOS and padding `<|im_end|>`, unknown `<|endoftext|>`, 8192
tokens, and `architectures: ["LlamaForCausalLM"]`, with the RoPE settings in
both transformers' spellings and no GGUF quantisation. The vocabulary, merges,
added tokens, chat template and weights are kept as the GGUF gave them. It
only reads and writes JSON (no torch, no transformers), so an old cache is
repaired in a fraction of a second instead of being dequantised again.

Measured (tests/generation/test_model_folder.py): transformers 4.57 and
transformers 5 encode English, Japanese, emoji and a rendered chat to the
same ids from the rewritten folder and decode them back to the same text.
Checked by hand with 5.25 (2026-12-07): a folder written under either reads
alike under both, tokenizer and config, and the weights they write are bit
for bit the same.
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from generation.runtime.source import ModelSource, resolve_source

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

CACHE_COMPLETE_MARKER = "cache-complete"
# The marker's content names the format of the folder beside it. Format 1 was
# written as "ok" by the GGUF loader alone; format 2 is the faithful folder.
# Bump it whenever this module changes what it writes, so that caches written
# before are rewritten on their next use.
CACHE_FORMAT = 2
MARKER_TEXT = f"format {CACHE_FORMAT}\n"

# tokenizers' ByteLevel components as GPT-2-style tokenizers (SmolLM2's
# included) publish them. The post-processor adds no token; it only fixes
# offsets.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_POST_PROCESSOR = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def _write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically, so a process reading the folder meanwhile
    sees the old file or the new one, never half of one."""
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, ensure_ascii=False)
            out.write("\n")
        # mkstemp's files are private (0600); these are as readable as the rest.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def faithful_tokenizer_json(spec: dict) -> dict:
    """Return tokenizer.json's content with the byte-level pipeline of the
    original: same vocabulary, merges and added tokens; no normaliser, a
    ByteLevel pre-tokenizer without prefix space, no BOS prepended, a plain
    ByteLevel decoder, and a BPE model without byte fallback (every byte is in
    a byte-level vocabulary, so the fallback never fires; it only makes
    runtimes guess SentencePiece)."""
    model = {**spec["model"], "byte_fallback": False, "fuse_unk": False}
    return {
        **spec,
        "normalizer": None,
        "pre_tokenizer": _BYTE_LEVEL,
        "post_processor": _POST_PROCESSOR,
        "decoder": _DECODER,
        "model": model,
    }


def _token(spec: dict, token_id) -> str | None:
    """The text of token `token_id` (an int, a list whose first is meant, or
    None) in tokenizer.json's added tokens or vocabulary."""
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    if not isinstance(token_id, int):
        return None
    for added in spec.get("added_tokens", []):
        if added["id"] == token_id:
            return added["content"]
    return next((text for text, index in spec["model"]["vocab"].items() if index == token_id), None)


def faithful_tokenizer_config(config: dict, special: dict) -> dict:
    """Return tokenizer_config.json's content for a GPT-2 tokenizer with the
    special tokens in `special` (bos_token, eos_token, pad_token, unk_token,
    model_max_length); the added tokens and any inline chat template are kept,
    every GGUF-derived Llama setting is dropped."""
    kept = {key: config[key] for key in ("added_tokens_decoder", "chat_template") if key in config}
    return {
        **kept,
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }


def faithful_config(config: dict, architecture: str | None) -> dict:
    """Return config.json's content as transformers 4.57, 5.x and vLLM all
    read it: `architectures` named (`architecture`, the causal-LM class of
    its model_type) when missing; no GGUF `quantization_config`, which
    transformers 5's GGUF loader records although the folder holds the
    dequantised float weights; and the RoPE settings that 5 writes only
    inside `rope_parameters` also as 4.57's `rope_theta` and `rope_scaling`
    (4.57 does not look inside and would silently rotate with base 10000
    instead of SmolLM2's 100000). 5.x reads both spellings alike."""
    config = dict(config)
    if architecture and not config.get("architectures"):
        config["architectures"] = [architecture]
    if (config.get("quantization_config") or {}).get("quant_method") == "gguf":
        del config["quantization_config"]
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
        scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
        config["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    return config


def _is_byte_level_bpe(spec: dict) -> bool:
    """Whether tokenizer.json is a GPT-2-style byte-level BPE (SmolLM2, Qwen,
    GPT-2), rather than a SentencePiece one that the GGUF loader's Llama
    tokenizer describes correctly."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return spec["model"].get("type") == "BPE" and any(part.get("type") == "ByteLevel" for part in parts)


def make_faithful(folder: Path) -> None:
    """Rewrite the tokenizer and model config files in `folder` (a folder the
    GGUF cache wrote, in any earlier format) so that every runtime reads it as
    the model's original publisher wrote it. Idempotent; leaves the weights
    alone. Called by the cache writer before the folder is marked complete,
    and on an old cache before it is used. Raises OSError or ValueError when
    a file is missing or not JSON.

    The special tokens come from the model's own config (bos_token_id,
    eos_token_id, pad_token_id, unk_token_id, max_position_embeddings): for
    SmolLM2 that is <|im_start|>, <|im_end|>, <|im_end|>, <|endoftext|> and
    8192, as published. A tokenizer that is not byte-level BPE is left as the
    GGUF loader wrote it.
    """
    # Imported here: transformers (and with it torch) is needed only while
    # writing, never to find a complete cache.
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_json = folder / "config.json"
    config = _read_json(config_json)
    faithful = faithful_config(config, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type")))
    if faithful != config:
        _write_json(config_json, faithful)

    tokenizer_json = folder / "tokenizer.json"
    spec = _read_json(tokenizer_json)
    if not _is_byte_level_bpe(spec):
        return
    eos = _token(spec, config.get("eos_token_id"))
    named = {
        "bos_token": _token(spec, config.get("bos_token_id")),
        "eos_token": eos,
        "pad_token": _token(spec, config.get("pad_token_id")) or eos,
        "unk_token": _token(spec, config.get("unk_token_id")),
    }
    special = {key: value for key, value in named.items() if value is not None}
    _write_json(tokenizer_json, faithful_tokenizer_json(spec))
    tokenizer_config = folder / "tokenizer_config.json"
    context = config.get("max_position_embeddings")
    limit = {"model_max_length": context} if isinstance(context, int) else {}
    _write_json(
        tokenizer_config, faithful_tokenizer_config(_read_json(tokenizer_config), {**special, **limit})
    )
    _write_json(folder / "special_tokens_map.json", special)


def file_sha256(path: Path) -> str:
    """Hash a file in chunks, so a large GGUF never sits in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_folder(
    source: ModelSource, cache_dir: Path, progress: Progress = logger.info
) -> tuple[Path, bool]:
    """Return a plain Hugging Face folder for `source` and whether it was a
    cache hit. A GGUF is dequantised into `cache_dir`, in a folder named by
    the first 32 hex digits of its SHA-256, on first use (tens of seconds); a
    cache of an earlier format is made faithful in place (a fraction of a
    second) and counts as a hit; a folder source is returned as it is."""
    if not source.gguf_file:
        return source.folder, False
    progress(f"Hashing {source.gguf_file}")
    cached = cache_dir / file_sha256(source.folder / source.gguf_file)[:32]
    marker = cached / CACHE_COMPLETE_MARKER
    if marker.is_file():
        if marker.read_text() != MARKER_TEXT:
            progress(f"Rewriting the tokenizer and config files of {cached} (cache format {CACHE_FORMAT})")
            make_faithful(cached)
            marker.write_text(MARKER_TEXT)
        return cached, True
    progress("Dequantising the GGUF weights (first start only: a minute or two on a small machine)")
    # Imported here: torch and transformers are needed only on a cache miss.
    from generation.runtime.loading import dequantise_into

    dequantise_into(source, cached, progress)
    return cached, False


def model_folder(setting: str, cache_dir: Path, progress: Progress = logger.info) -> Path:
    """Return the Hugging Face folder of the model that GENERATION_MODEL
    (`setting`; empty is the bundled SmolLM2) names, writing the GGUF cache
    first if it is missing. For what serves or counts tokens outside the model
    thread: `manage.py model_folder` (and through it `make vllm`) and the
    OpenAI backend's tokenizer. Raises ModelLoadError for a bad setting."""
    return cached_folder(resolve_source(setting), cache_dir, progress)[0]
