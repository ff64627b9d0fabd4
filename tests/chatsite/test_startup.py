"""Start-up: the web app and manage.py do not import the model stack.

torch and transformers take seconds to import. Only the model thread, model
loading and the commands that run the model (generate, bench_engine) need
them; `manage.py check`, `migrate`, `createsuperuser` and the web server's
start-up must not wait for them.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")

# The modules that run the model; everything else must import without torch.
MODEL_STACK = {
    "generation.runtime.attention",
    "generation.runtime.engine",
    "generation.runtime.interleave",
    "generation.runtime.kvcache",
    "generation.runtime.loading",
    "generation.runtime.prefixcache",
    "generation.runtime.ragged",
    "generation.runtime.sampler",
    "generation.runtime.seqkv",
    "generation.runtime.threads",
}

IMPORT_EVERYTHING = f"""
import importlib, os, pkgutil, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
import chatsite.asgi  # sets Django up, then the WebSocket routing and consumers
import chatsite.urls
from django.urls import get_resolver
get_resolver().url_patterns
for package in ("chatsite", "generation", "queueadmin"):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name not in {sorted(MODEL_STACK)!r} and ".migrations." not in info.name:
            importlib.import_module(info.name)
# Validating the console's settings reads the model's context from its files,
# or the remote engine's as this process's service heard it.
from django.conf import settings
from generation.runtime.context import backend_context_tokens, model_context_tokens
assert model_context_tokens("") > 0 and backend_context_tokens() > 0
settings.GENERATION_BACKEND = "openai"
assert backend_context_tokens() > 0
print(",".join(name for name in {HEAVY!r} if name in sys.modules))
"""


def run_python(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_manage_py_check_does_not_import_torch_or_transformers():
    """A newcomer's first `manage.py check` starts in about a second, not ten."""
    result = run_python("-X", "importtime", "manage.py", "check")
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY), "manage.py check imported " + ", ".join(sorted(imported & set(HEAVY)))
    assert "no issues" in result.stdout


def test_app_modules_asgi_and_urls_import_without_the_model_stack():
    """Every app module, the URL configuration and the ASGI application (as
    daphne loads it) import without torch or transformers, and so does reading
    the model's context for the settings form; the model thread imports them
    when it loads the model."""
    result = run_python("-c", IMPORT_EVERYTHING)
    assert result.stdout.strip() == "", "imported at start-up: " + result.stdout.strip()
