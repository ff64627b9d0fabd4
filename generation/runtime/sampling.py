"""Per-request decoding options, shared by the service and the engines.

Kept apart from `engine.py` so that the service, the consumers and the web
pages can build and carry them without importing torch: only the model
thread and the management commands that run the model import the model stack.
"""

from dataclasses import dataclass

MAX_STOP_STRINGS = 4
"""The most stop strings one request may give (OpenAI's limit)."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding options. temperature 0 means greedy; ignore_eos
    (for benchmarks) generates exactly max_new_tokens.

    `stop`: up to MAX_STOP_STRINGS non-empty strings; the reply ends (finish
    reason "stop") as soon as its text contains one, and neither the stop
    string nor anything after it is part of the reply. `seed`: with a
    temperature above 0, the same seed and prompt give the same reply, even
    among other requests in the same batch (None: no promise). Raises
    ValueError for a malformed `stop` or `seed`; the API checks its input
    before, so this only catches a caller's mistake.
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop must be a tuple of non-empty strings")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError("seed must be an integer or None")
