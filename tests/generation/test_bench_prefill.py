"""`manage.py bench_prefill` runs on the tiny model and reports its figures."""

import json

from django.core.management import call_command


def test_gap_mode_reports_each_chunk_size(tiny_model, tmp_path):
    """One row per chunk size, with the gaps and the long prompt's TTFT."""
    path = tmp_path / "gap.json"
    call_command("bench_prefill", "--chunks", "0,64", "--long-tokens", "400", "--json", str(path))
    rows = json.loads(path.read_text())["results"]
    assert [row["chunk_tokens"] for row in rows] == [0, 64]
    for row in rows:
        assert row["max_gap_ms"] >= row["median_gap_during_ms"] >= 0
        assert row["long_ttft_ms"] > 0


def test_prompt_mode_reports_trimmed_histories(tiny_model, tmp_path):
    """Histories of 10, 20 and 40 turns: the longer ones are trimmed to fit."""
    path = tmp_path / "prompt.json"
    call_command("bench_prefill", "--mode", "prompt", "--json", str(path))
    rows = json.loads(path.read_text())["results"]
    assert [row["turns"] for row in rows] == [10, 20, 40]
    assert rows[2]["dropped_messages"] > 0 and rows[2]["prompt_tokens"] <= 8192


def test_reuse_mode_reports_each_turn_and_the_fresh_comparison(tiny_model, tmp_path):
    """Each turn's TTFT and reused tokens; the middle and last turns again
    without the prefix cache, with the same text."""
    path = tmp_path / "reuse.json"
    call_command(
        "bench_prefill", "--mode", "reuse", "--turns", "4", "--reply-tokens", "6", "--json", str(path)
    )
    rows = json.loads(path.read_text())["results"]
    assert [row["turn"] for row in rows] == [1, 2, 3, 4]
    assert rows[0]["reused_tokens"] == 0 < rows[3]["reused_tokens"] < rows[3]["prompt_tokens"]
    assert [row["same_text"] for row in rows] == ["", True, "", True]
    assert rows[3]["ttft_fresh_ms"] > 0


def test_reuse_load_mode_reports_peak_rss(tiny_model, tmp_path):
    """Several conversations at once: throughput, TTFT, reuse and peak RSS."""
    path = tmp_path / "load.json"
    call_command(
        "bench_prefill",
        "--mode",
        "reuse-load",
        "--concurrency",
        "3",
        "--turns",
        "2",
        "--reply-tokens",
        "5",
        "--json",
        str(path),
    )
    [row] = json.loads(path.read_text())["results"]
    assert row["concurrency"] == 3 and row["reused_tokens"] > 0 and row["peak_rss_mb"] > 0
