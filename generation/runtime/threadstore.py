"""Where measured torch thread counts are kept: a small JSON file in the
model cache folder (GENERATION_CACHE_DIR), one entry per calibration key.

A key names everything the fastest thread count depends on (the CPU model,
the cores this process may use, torch's version, the model, the engine
strategy; `calibration_key`), so a later start on the same machine reuses
the pick without measuring, and a change of any of them measures again.
Kept apart from generation.runtime.threads, which imports torch, so that
reading the file and building the key stay cheap.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

STORE_NAME = "torch-threads.json"
FORMAT = 1  # bumped when an entry's fields change: older files are ignored


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo states it (its first "model
    name" line), else what `platform` knows (macOS, other systems)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's
    cpuset, `taskset`), not the host's count; os.cpu_count() where the
    system has no affinity call."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def calibration_key(model: dict, strategy: str, versions: dict[str, str]) -> dict:
    """What a measurement depends on: this machine (CPU model, usable cores),
    the `versions` of the libraries that run the forward pass (torch,
    transformers), the `model` (a dict naming it: generation.runtime.threads
    builds it) and the engine `strategy`."""
    return {"cpu": cpu_model(), "cores": usable_cores(), **versions, "model": model, "strategy": strategy}


def key_id(key: dict) -> str:
    """A short stable id of `key` (the entries' index in the file)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_store(cache_dir: Path) -> dict:
    """The file's entries by key id; {} when there is no file yet. A file
    that cannot be read or parsed (cut short, edited by hand, another
    format) is ignored with a warning: the caller measures again and
    rewrites it."""
    path = Path(cache_dir) / STORE_NAME
    try:
        return _entries(path)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("Ignoring the torch thread calibration file %s (%s); measuring again", path, error)
        return {}


def _entries(path: Path) -> dict:
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        raise ValueError(f"not a format-{FORMAT} thread calibration file")
    return data["entries"]


def lookup(cache_dir: Path, key: dict) -> dict | None:
    """The stored entry for `key` ({"key", "threads", "timings", ...}), or None."""
    entry = read_store(cache_dir).get(key_id(key))
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("threads"), int):
        return entry
    return None


def store(cache_dir: Path, entry: dict) -> Path | None:
    """Add or replace `entry` (its "key" says where) and write the file
    atomically (a temporary file renamed over it), so that a reader never
    sees half of it. Returns the path, or None when the folder cannot be
    written (logged; the pick still applies to this process)."""
    folder = Path(cache_dir)
    path = folder / STORE_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        entries = {}
        # An unreadable file was reported by the lookup that led here: replaced.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            entries = _entries(path)
        entries[key_id(entry["key"])] = entry
        handle, staging = tempfile.mkstemp(prefix=STORE_NAME + ".", dir=folder)
        with os.fdopen(handle, "w") as out:
            json.dump({"format": FORMAT, "entries": entries}, out, indent=1, sort_keys=True)
        os.replace(staging, path)
        return path
    except OSError as error:
        logger.warning("Could not write the torch thread calibration to %s: %s", path, error)
        return None


@contextlib.contextmanager
def exclusive(cache_dir: Path):
    """Hold the calibration lock of `cache_dir` (an flock on a file beside
    the store): processes starting together on one host measure one after
    another, and the later ones find the first one's entry instead of
    measuring while it does (each would slow the other's figures). Yields
    without a lock when the folder cannot be written."""
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        handle = open(Path(cache_dir) / (STORE_NAME + ".lock"), "a")  # noqa: SIM115 - held across the yield
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
