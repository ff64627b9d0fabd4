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
