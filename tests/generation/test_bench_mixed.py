"""`manage.py bench_engine --workload mixed` on the tiny model: one child
process per configuration, and the figures issue #14 names for each."""

import json

from django.core.management import call_command

from generation.management.mixed_configs import CONFIGURATIONS
from generation.management.mixed_workload import FIGURES

SMALL = ["--conversations", "3", "--turns", "3", "--turn-tokens", "20,40", "--paste-every", "2"]
SMALL += ["--paste-tokens", "300", "--arrival-s", "0.1", "--think-s", "0.05", "--new-tokens", "6"]


def test_mixed_workload_reports_each_configuration(tiny_model, tmp_path):
    """Every configuration has exactly the issue's keys; a configuration that
    ran has sane figures, and one that could not run (prefix reuse not in
    this build) has none and says why, instead of baseline figures."""
    path = tmp_path / "mixed.json"
    call_command("bench_engine", "--workload", "mixed", *SMALL, "--threads", "1", "--json", str(path))
    report = json.loads(path.read_text())
    assert set(report) == {*CONFIGURATIONS, "run"}
    unavailable = report["run"].get("unavailable", {})
    for name in CONFIGURATIONS:
        figures = report[name]
        assert list(figures) == list(FIGURES), name
        if name in unavailable:
            assert "reuse" in name and set(figures.values()) == {None}, name
            continue
        assert all(value > 0 for value in figures.values()), (name, figures)
        assert figures["ttft_p95_ms"] >= figures["ttft_p50_ms"], name
        assert figures["itl_p99_ms"] >= figures["itl_p50_ms"], name
        assert figures["max_gap_ms"] >= figures["itl_p99_ms"], name
        counts = report["run"]["configurations"][name]
        # 3 conversations: the probe's 3 turns, 2 to 3 each for the others, one paste.
        assert counts["pastes"] == 1 and counts["requests"] >= 7, counts
        assert counts["completion_tokens"] == 6 * (counts["requests"] - 1), counts
    assert {"baseline", "chunked"} <= set(report["run"]["configurations"])
