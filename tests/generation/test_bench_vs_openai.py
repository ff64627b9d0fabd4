"""`manage.py bench_engine --vs-openai URL` against chatsite's own /v1 on a
live daphne (tiny model): the engine's rows and the server's, side by side.
Run under the live-test lock (tests/live.py starts daphne)."""

import json

from django.core.management import call_command

from tests.live import daphne, live_env, prepare_database

SEED = """
import json
from django.contrib.auth import get_user_model
from generation import services
user = get_user_model().objects.create_user("ann", password="pw-ann-4821")
print(json.dumps({"token": services.api_key_create(user=user, name="bench")[1]}))
"""


def test_vs_openai_reports_both_sides(tiny_model, tmp_path, capsys):
    """At each concurrency the server answered every request, with tokens and
    a TTFT, next to the engine's row for the same prompts and budget."""
    env = live_env(
        tmp_path / "db.sqlite3",
        model=tiny_model,
        GENERATION_TORCH_THREADS="1",
        GENERATION_MAX_CONCURRENCY="4",
        DEBUG="1",
    )
    token = prepare_database(env, SEED)["token"]
    path = tmp_path / "vs.json"
    with daphne(env, tmp_path / "daphne.log") as url:
        call_command(
            "bench_engine",
            *("--strategies", "batched", "--concurrency", "1,2", "--new-tokens", "6", "--threads", "1"),
            *("--vs-openai", f"{url}/v1", "--api-key", token, "--json", str(path)),
        )
    report = json.loads(path.read_text())
    ours, theirs = report["results"], report["server_results"]
    assert [row["concurrency"] for row in ours] == [row["concurrency"] for row in theirs] == [1, 2]
    for row in theirs:
        assert row["errors"] == 0 and row["completion_tokens"] > 0, row
        assert row["aggregate_tok_s"] > 0 and row["ttft_p95_ms"] >= row["ttft_p50_ms"] > 0, row
    assert "engine/server" in capsys.readouterr().out
