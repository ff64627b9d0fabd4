"""Runs untrusted_text_on_postgres.py against the real PostgreSQL
(127.0.0.1:5432, as the README's test prerequisites say), in a subprocess,
since the rest of the suite runs on SQLite."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_untrusted_text_on_postgresql():
    """Every case passes on PostgreSQL; the test database has a name of its own."""
    database = f"postgres://postgres@127.0.0.1:5432/chatsite_text_{os.getpid()}"
    env = {**os.environ, "DATABASE_URL": database}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(HERE / "untrusted_text_on_postgres.py"),
        ],
        cwd=HERE.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
