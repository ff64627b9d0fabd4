"""`bench_chat --api`: the benchmark view of issue #12.

The command runs each client count through the chat socket and then through
POST /v1/chat/completions on one live daphne (here on the tiny model and a
database of this test's own), and reports both paths and the API's
throughput over the WebSocket's. Its timings are benchmark figures: they are
reported in docs/benchmarks.md, not asserted here.
"""

import json

from tests.live import daphne, live_env, manage, manage_shell, prepare_database, seed_logged_in_users

LIVE_BENCH_KEYS = """
import json
from generation.models import ApiKey
print(json.dumps(ApiKey.objects.filter(name="bench_chat", revoked_at__isnull=True).count()))
"""


def test_bench_chat_api_reports_both_paths_and_their_ratio(tiny_model_dir, tmp_path):
    """Two clients: one row per path with the same replies (greedy, the same
    prompts), no errors, and a comparison row whose ratio is the API's tok/s
    over the WebSocket's; the run's API keys are revoked afterwards."""
    report = tmp_path / "bench.json"
    env = live_env(
        tmp_path / "db.sqlite3",
        model=tiny_model_dir,
        REDIS_URL="",
        GENERATION_MAX_NEW_TOKENS="8",
        # No Redis: the server reads the command's limits from the database.
        QUEUEADMIN_SETTINGS_CHECK_S="1",
    )
    prepare_database(env, seed_logged_in_users([]))
    with daphne(env, tmp_path / "daphne.log") as url:
        bench = [
            *("bench_chat", "--api", "--url", url.replace("http", "ws", 1) + "/ws/chat/"),
            *("--clients", "2", "--new-tokens", "8", "--warmup", "1", "--json", str(report)),
        ]
        result = manage(env, *bench)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split(" | ")[:4] == ["path", "clients", "cap", "aggregate_tok_s"]
    assert "clients | ws_tok_s | api_tok_s | api_over_ws" in lines

    payload = json.loads(report.read_text())
    rows = payload["results"]
    assert [(row["path"], row["clients"]) for row in rows] == [("ws", 2), ("api", 2)]
    ws, api = rows
    for row in rows:
        assert row["errors"] == {}
        assert row["completion_tokens"] > 0
        assert row["aggregate_tok_s"] > 0
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p95_ms"]
    # The same load: greedy replies to the same prompts, token for token as long.
    assert api["completion_tokens"] == ws["completion_tokens"]
    [compared] = payload["comparison"]
    assert compared == {
        "clients": 2,
        "ws_tok_s": ws["aggregate_tok_s"],
        "api_tok_s": api["aggregate_tok_s"],
        "api_over_ws": round(api["aggregate_tok_s"] / ws["aggregate_tok_s"], 3),
    }
    assert manage_shell(env, LIVE_BENCH_KEYS) == 0
