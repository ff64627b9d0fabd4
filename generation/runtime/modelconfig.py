"""The sampling numbers a model's publisher ships with it.

A Hugging Face folder may hold `generation_config.json`; its `temperature`,
`top_p`, `top_k` and `repetition_penalty` are what `model.generate` uses and
what vLLM applies by default (`--generation-config auto`). A GGUF may carry
llama.cpp's `general.sampling.temp`, `.top_p`, `.top_k` and
`.penalty_repeat`. Only the keys a file states count: transformers'
GenerationConfig fills in its own defaults (temperature 1, top_k 50) for
the rest, which are not the publisher's advice. An explicit `"do_sample":
false` means greedy (transformers ignores the sampling keys then), so it
reads as temperature 0.

Reads JSON and GGUF metadata only (no torch); called once per model load,
in the model thread.
"""

import json
import logging
from pathlib import Path

from generation.runtime.sampling import SamplingDefaults

logger = logging.getLogger(__name__)

_JSON_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
_GGUF_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.penalty_repeat": "repetition_penalty",
}


def _usable(values: dict, where: str) -> SamplingDefaults:
    """A partial layer of the values that pass the range checks; one that
    does not is logged and left out (the next layer gives it)."""
    kept = {}
    for name, value in values.items():
        if name == "top_k" and isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            SamplingDefaults.partial(where, **{name: value})
        except ValueError as error:
            logger.warning("Ignoring %s in %s: %s", name, where, error)
        else:
            kept[name] = value
    return SamplingDefaults.partial(where, **kept)


def folder_defaults(folder: Path) -> SamplingDefaults:
    """The sampling values `folder/generation_config.json` states (a partial
    layer; empty when there is no such file or it is not a JSON object)."""
    path = Path(folder) / "generation_config.json"
    where = "the model's generation_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SamplingDefaults.partial(where)
    except (OSError, ValueError) as error:
        logger.warning("Ignoring %s: %s", path, error)
        return SamplingDefaults.partial(where)
    if not isinstance(data, dict):
        return SamplingDefaults.partial(where)
    values = {key: data[key] for key in _JSON_KEYS if data.get(key) is not None}
    if data.get("do_sample") is False:
        values["temperature"] = 0.0
        values.pop("top_p", None)
        values.pop("top_k", None)
    return _usable(values, where)


def gguf_defaults(path: Path) -> SamplingDefaults:
    """The sampling values a GGUF's `general.sampling.*` metadata states (a
    partial layer; empty when it states none or cannot be read)."""
    where = "the GGUF's general.sampling metadata"
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
        values = {name: fields[key].contents() for key, name in _GGUF_KEYS.items() if key in fields}
    except Exception as error:  # a GGUF the reader cannot parse still loads through transformers
        logger.warning("Could not read the sampling metadata of %s: %s", path, error)
        return SamplingDefaults.partial(where)
    return _usable(values, where)


def model_defaults(folder: Path, gguf: Path | None = None) -> SamplingDefaults:
    """The model's own sampling values: the metadata of the GGUF it was
    loaded from, if any, else (and for what that leaves out) the
    generation_config.json of the folder it was loaded from (for a GGUF, the
    weight cache's folder, whose config transformers built from the GGUF)."""
    from_folder = folder_defaults(folder)
    return gguf_defaults(gguf).layered(from_folder) if gguf else from_folder
