"""`manage.py bench_engine --profile-step N` on the tiny model."""

import json

from django.core.management import call_command


def test_profile_step_splits_a_decode_step(tiny_model, tmp_path):
    """A step at 4 sequences is split into forward, sampling, bookkeeping and
    detokenising, whose shares account for the whole step; torch's top
    operators are listed."""
    path = tmp_path / "profile.json"
    call_command(
        "bench_engine", "--profile-step", "4", "--steps", "5", "--torch-profile", "--json", str(path)
    )
    result = json.loads(path.read_text())
    assert result["sequences"] == 4 and result["step_ms"] > 0
    assert set(result["sections_ms"]) == {"forward", "sampling", "bookkeeping", "detokenising"}
    assert result["sections_ms"]["forward"] > 0
    assert abs(sum(result["shares"].values()) - 1) < 0.01
    assert result["top_ops"] and all(op["self_ms_per_step"] >= 0 for op in result["top_ops"])
