"""The configured model's context window, read without loading the model.

Settings that share the context with the prompt (the reply's token budget)
are validated where staff edit them, in processes that may not hold the
model. `backend_context_tokens()` says which context bounds them: the
remote engine's with GENERATION_BACKEND=openai, else the local model's,
read from its files (`config.json` of a Hugging Face folder, or the
`<arch>.context_length` key of a GGUF header). It imports neither torch nor
transformers. At run time the generation service uses the loaded model's
own config instead (`ModelWorker.context_tokens`).
"""

import functools
import json
import logging
import struct
from pathlib import Path

logger = logging.getLogger(__name__)

# The context window the openai backend assumes when neither
# GENERATION_OPENAI_CONTEXT_TOKENS nor the engine says (vLLM reports
# `max_model_len`; most others report nothing).
DEFAULT_REMOTE_CONTEXT_TOKENS = 4096

# Names transformers' configs use for the longest sequence, most common first.
CONFIG_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")

# GGUF value types: fixed sizes (struct formats) of the scalar ones; 8 is a
# string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def reply_budget_bound(context_tokens: int) -> int:
    """The largest max_new_tokens staff may set: half the context, so that
    a question of the same size always fits beside the reply."""
    return context_tokens // 2


def backend_context_tokens() -> int | None:
    """The context window, in tokens, of the model that generates the
    replies, for bounding the reply budget (`reply_budget_bound`): the
    console's settings form, GenerationSettings.clean and the system check.

    With GENERATION_BACKEND=openai: the context this process's generation
    service uses once its engine was ready (BackendInfo.context_tokens:
    GENERATION_OPENAI_CONTEXT_TOKENS, or less when the engine reports a
    smaller max_model_len); before that, GENERATION_OPENAI_CONTEXT_TOKENS
    when set, else DEFAULT_REMOTE_CONTEXT_TOKENS, as the backend assumes. Otherwise the
    local model's (`model_context_tokens`), None when its files do not say.
    Neither asks the engine nor loads a model, so it may be called from
    any thread, in any process.
    """
    from django.conf import settings

    if settings.GENERATION_BACKEND != "openai":
        return model_context_tokens(settings.GENERATION_MODEL)
    from generation.runtime.registry import running_backend_info

    info = running_backend_info()
    if info is not None and info.kind == "openai" and info.context_tokens > 0:
        return info.context_tokens
    return settings.GENERATION_OPENAI_CONTEXT_TOKENS or DEFAULT_REMOTE_CONTEXT_TOKENS


def folder_context_tokens(folder: Path) -> int | None:
    """The context length in a Hugging Face folder's config.json, if it says."""
    config = json.loads((folder / "config.json").read_text())
    config = {**config.get("text_config", {}), **config}
    return next((int(config[key]) for key in CONFIG_KEYS if isinstance(config.get(key), int)), None)


def gguf_context_tokens(path: Path) -> int | None:
    """The `<arch>.context_length` of a GGUF file, read from its header.

    gguf's GGUFReader parses every tensor and the whole vocabulary first (about
    10 s for SmolLM2 on two cores); this walks the key-value section only as far
    as the key, which comes before the vocabulary in files written by llama.cpp.
    """
    with path.open("rb") as handle:

        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, handle.read(size))[0]

        def read_string() -> str:
            return handle.read(read("Q")).decode("utf-8", "replace")

        def skip(value_type: int) -> None:
            if value_type == _GGUF_STRING:
                handle.seek(read("Q"), 1)
            elif value_type == _GGUF_ARRAY:
                item_type, count = read("I"), read("Q")
                if item_type in _GGUF_SCALARS:
                    handle.seek(count * struct.calcsize("<" + _GGUF_SCALARS[item_type]), 1)
                else:
                    for _ in range(count):
                        skip(item_type)
            else:
                handle.seek(struct.calcsize("<" + _GGUF_SCALARS[value_type]), 1)

        if handle.read(4) != b"GGUF" or read("I") < 2:
            raise ValueError(f"{path} is not a GGUF file of version 2 or later.")
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key, value_type = read_string(), read("I")
            if key.endswith(".context_length") and value_type in _GGUF_SCALARS:
                return int(read(_GGUF_SCALARS[value_type]))
            skip(value_type)
    return None


@functools.lru_cache(maxsize=8)
def model_context_tokens(setting: str) -> int | None:
    """The context length of the model GENERATION_MODEL names ("" is the bundled
    SmolLM2), or None when its files cannot be found or do not say; cached
    per process. Called when settings that depend on it are validated."""
    from generation.runtime.source import ModelLoadError, resolve_source

    try:
        source = resolve_source(setting)
        if source.gguf_file:
            return gguf_context_tokens(source.folder / source.gguf_file)
        return folder_context_tokens(source.folder)
    except (ModelLoadError, OSError, ValueError, KeyError, struct.error) as error:
        logger.warning("Cannot read the context length of GENERATION_MODEL=%r: %s", setting, error)
        return None
