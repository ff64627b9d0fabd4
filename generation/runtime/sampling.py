"""Per-request decoding options, shared by the service and the engines.

Kept apart from `engine.py` so that the service, the consumers and the web
pages can build and carry them without importing torch: only the model
thread and the management commands that run the model import the model stack.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding options. temperature 0 means greedy; ignore_eos
    (for benchmarks) generates exactly max_new_tokens."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    ignore_eos: bool = False
