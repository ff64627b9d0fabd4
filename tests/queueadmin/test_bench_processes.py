"""`bench_chat --processes`: the benchmark view of issue #11.

The command starts daphne processes of its own (here on the tiny model, a
PostgreSQL database of this test's own, since four processes write records
at once, and a redis-server of its own), runs each client
count with the site-wide queue and with per-process admission, and reports
what global admission costs a request. Its timings are benchmark figures:
they are reported in docs/benchmarks.md, not asserted here.
"""

import json

from tests.live import live_env, manage, prepare_database, redis_server, seed_logged_in_users
from tests.queueadmin.sitecluster import fresh_database


def test_bench_chat_compares_site_and_process_admission(tiny_model_dir, tmp_path):
    """Two processes, two clients, two rounds: the scopes alternate (site,
    process, process, site); one pooled row per admission scope with the
    throughput and submit-to-start percentiles of all four replies, and the
    overhead of the site queue, on stdout and in the JSON report."""
    report = tmp_path / "bench.json"
    with fresh_database() as database_url, redis_server(tmp_path) as redis:
        env = live_env(database_url, model=tiny_model_dir, REDIS_URL=f"redis://127.0.0.1:{redis.port}/0")
        prepare_database(env, seed_logged_in_users([]))
        bench = [
            *("bench_chat", "--processes", "2", "--clients", "2", "--new-tokens", "8"),
            *("--warmup", "2", "--rounds", "2", "--json", str(report)),
        ]
        result = manage(env, *bench)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split(" | ")[:6] == [
        *("scope", "processes", "clients", "cap", "aggregate_tok_s", "admission_p50_ms")
    ]
    assert "clients | overhead_p50_ms | overhead_p95_ms" in lines

    payload = json.loads(report.read_text())
    assert [(row["round"], row["scope"]) for row in payload["per_round"]] == [
        *((1, "site"), (1, "process"), (2, "process"), (2, "site"))
    ]
    rows = payload["results"]
    assert [(row["scope"], row["processes"], row["clients"]) for row in rows] == [
        ("site", 2, 2),
        ("process", 2, 2),
    ]
    for row in rows:
        assert row["errors"] == {}
        assert row["completion_tokens"] > 0
        assert row["aggregate_tok_s"] > 0
        assert row["rounds"] == 2
        assert row["admission_samples"] == 4  # both replies of both rounds were read back
        assert 0 <= row["admission_p50_ms"] <= row["admission_p95_ms"]
    [overhead] = payload["overhead"]
    assert overhead["clients"] == 2
    assert isinstance(overhead["overhead_p50_ms"], float)
    assert isinstance(overhead["overhead_p95_ms"], float)
