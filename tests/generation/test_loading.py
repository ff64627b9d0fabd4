"""Model loading: clear errors, the GGUF weight cache, the bundled model."""

import pytest
import torch

from generation.runtime.loading import (
    CACHE_COMPLETE_MARKER,
    ModelLoadError,
    bundled_gguf_path,
    cached_folder,
    load_model,
    resolve_device,
    resolve_source,
)


def test_default_is_the_bundled_gguf():
    source = resolve_source("")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.folder == bundled_gguf_path().parent


def test_missing_path_names_the_variable(tmp_path):
    with pytest.raises(ModelLoadError, match="GENERATION_MODEL"):
        resolve_source(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="GENERATION_MODEL"):
        resolve_source(str(tmp_path / "missing.gguf"))


def test_broken_model_folder_names_the_variable(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="GENERATION_MODEL"):
        load_model(resolve_source(str(tmp_path)), torch.device("cpu"), tmp_path / "cache")


def test_bad_device_names_the_variable():
    with pytest.raises(ModelLoadError, match="GENERATION_DEVICE"):
        resolve_device("toaster")


def test_auto_device_is_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_gguf_cache_is_keyed_by_hash_and_complete(settings):
    folder, _ = cached_folder(resolve_source(""), settings.GENERATION_CACHE_DIR)
    assert (folder / CACHE_COMPLETE_MARKER).is_file()
    assert (folder / "model.safetensors").is_file()
    assert len(folder.name) == 32
    again, hit = cached_folder(resolve_source(""), settings.GENERATION_CACHE_DIR)
    assert (again, hit) == (folder, True)


@pytest.mark.real_model
def test_real_model_knows_the_capital_of_france(real_model):
    """The bundled SmolLM2, loaded through the cache, answers greedily with Paris."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    # return_dict: transformers 5.x returns the ids and the mask by default,
    # 4.57 the ids alone.
    inputs = real_model.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = real_model.model.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert "Paris" in real_model.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
