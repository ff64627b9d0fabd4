"""chatsite's ASGI application for a live test of the model's first load:
the load waits until the file named by CHATSITE_TEST_LOAD_GATE exists, as
the first load of a big model takes minutes. Served by daphne
(tests/live.py, `application=`); never used outside the tests."""

import os
import time
from pathlib import Path

from chatsite.asgi import application  # noqa: F401  (what daphne serves)
from generation.runtime import registry

_GATE = Path(os.environ["CHATSITE_TEST_LOAD_GATE"])
_configured_model_loader = registry.configured_model_loader


def _gated_model_loader():
    load = _configured_model_loader()

    def load_after_gate():
        while not _GATE.exists():
            time.sleep(0.1)
        return load()

    return load_after_gate


registry.configured_model_loader = _gated_model_loader
