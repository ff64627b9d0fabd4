"""Where a reply's sampling values come from when nobody chose them: the
operator's GENERATION_* variables, else the model's own generation config,
else chatsite's fallback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from generation.runtime.engine import Engine
from generation.runtime.modelconfig import folder_defaults, gguf_defaults, model_defaults
from generation.runtime.sampling import FALLBACK, SamplingDefaults, SamplingParams
from generation.runtime.source import bundled_gguf_path

ROOT = Path(__file__).resolve().parents[2]


def folder_with(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    return tmp_path


def test_only_the_values_a_generation_config_states_count(tmp_path):
    """As vLLM reads it: transformers' own defaults (temperature 1, top_k 50)
    are not the publisher's advice, so what the file leaves out stays unset."""
    folder = folder_with(tmp_path, {"eos_token_id": 2, "do_sample": True, "temperature": 0.6, "top_p": 0.9})
    found = folder_defaults(folder)
    assert (found.temperature, found.top_p, found.top_k, found.repetition_penalty) == (0.6, 0.9, None, None)
    resolved = found.layered(FALLBACK)
    assert (resolved.temperature, resolved.top_p, resolved.top_k, resolved.repetition_penalty) == (
        0.6,
        0.9,
        0,
        1.1,
    )
    assert "generation_config.json" in dict(resolved.sources)["temperature"]
    assert dict(resolved.sources)["repetition_penalty"] == "chatsite fallback"


def test_do_sample_false_means_greedy_and_bad_values_are_skipped(tmp_path):
    folder = folder_with(tmp_path, {"do_sample": False, "temperature": 0.7, "repetition_penalty": 9})
    found = folder_defaults(folder)
    assert (found.temperature, found.repetition_penalty) == (0.0, None)
    assert folder_defaults(tmp_path / "missing").temperature is None
    (tmp_path / "generation_config.json").write_text("[1, 2]")
    assert folder_defaults(tmp_path) == SamplingDefaults.partial("the model's generation_config.json")


def test_the_bundled_smollm2_states_nothing_so_the_fallback_applies():
    """Neither its GGUF nor the config transformers builds from it carry a
    sampling value: the model card's temperature 0.2 and top_p 0.9 apply,
    with chatsite's repetition penalty 1.1."""
    gguf = bundled_gguf_path()
    assert gguf_defaults(gguf) == SamplingDefaults.partial("the GGUF's general.sampling metadata")
    resolved = model_defaults(gguf.parent, gguf).layered(FALLBACK)
    assert (resolved.temperature, resolved.top_p, resolved.top_k, resolved.repetition_penalty) == (
        0.2,
        0.9,
        0,
        1.1,
    )


def test_the_operators_values_win_over_the_models(tmp_path):
    operator = SamplingDefaults.partial("settings", temperature=0.8, repetition_penalty=None)
    model = folder_defaults(folder_with(tmp_path, {"temperature": 0.3, "top_k": 40}))
    resolved = operator.layered(model, FALLBACK)
    assert (resolved.temperature, resolved.top_p, resolved.top_k, resolved.repetition_penalty) == (
        0.8,
        0.9,
        40,
        1.1,
    )
    assert dict(resolved.sources)["temperature"] == "settings"
    assert SamplingParams(8, temperature=0.0).resolved(resolved).temperature == 0.0  # a choice stays


@pytest.mark.parametrize(
    ("variable", "value"),
    [("GENERATION_TEMPERATURE", "3"), ("GENERATION_TOP_P", "0"), ("GENERATION_TOP_K", "1.5"),
     ("GENERATION_REPETITION_PENALTY", "0.9"), ("GENERATION_TEMPERATURE", "warm")],
)  # fmt: skip
def test_a_bad_sampling_variable_stops_the_settings_with_its_name(variable, value):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), variable: value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert variable in result.stderr


@pytest.mark.django_db
async def test_an_operator_temperature_reaches_the_engine(tiny_model_dir, monkeypatch):
    """GENERATION_TEMPERATURE (through the registry's layer) is what a reply
    that chose nothing is sampled with, over the model's own greedy."""
    from generation.runtime import registry
    from generation.runtime.backends.local import LocalBackend
    from generation.runtime.loading import shared_model
    from generation.runtime.service import GenerationService
    from generation.runtime.types import Done, Limits

    monkeypatch.setattr(django_settings, "GENERATION_TEMPERATURE", 0.7, raising=False)
    seen = []
    real_add = Engine.add
    monkeypatch.setattr(
        Engine, "add", lambda self, *a: seen.append(a[2].resolved(self.defaults)) or real_add(self, *a)
    )

    def load():
        return shared_model(str(tiny_model_dir), "cpu", django_settings.GENERATION_CACHE_DIR)

    service = GenerationService(
        backend=LocalBackend(load, sampling=registry.sampling_overrides()), limits=Limits(max_new_tokens=4)
    )
    service.start()
    try:
        handle = service.submit(user_id=1, messages=[{"role": "user", "content": "hi"}])
        events = [event async for event in handle]
    finally:
        service.stop()
    assert isinstance(events[-1], Done)
    assert (seen[0].temperature, seen[0].repetition_penalty) == (0.7, 1.0)
